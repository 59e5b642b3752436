//! The HTTP JSON API (SPEC §7), served with axum, by default on 127.0.0.1.
//!
//! | call | answer |
//! |---|---|
//! | `GET /v1/status` | [`StatusView`](super::views::StatusView) |
//! | `POST /v1/ops?wait=stored\|applied:K\|stable[&timeout_ms=N]` `{"key", "value"}` | `201 {"origin", "seq"}` once the op is stored durably (`stored`, the default), applied by K members in good standing (`applied:K`), or under the snapshot point (`stable`); `value: null` deletes. 504 `{"error", "origin", "seq"}` when the wait times out (default 10 s, at most 60 s): the op is kept |
//! | `GET /v1/state?at=snapshot\|applied[&start_key=K][&limit=N]` | [`StateView`](super::views::StateView), entries sorted by key; with a limit, one page and the `next_key` |
//! | `GET /v1/state/{key}?at=snapshot\|applied` | [`KeyView`](super::views::KeyView); 404 (with the `at` read) if the key is not live there |
//! | `GET /v1/network-map` | [`NetworkMapView`](super::views::NetworkMapView) |
//! | `GET /v1/snapshot-point/watch` | server-sent events, one `snapshot-point` event per change ([`SnapshotPointView`](super::views::SnapshotPointView)) |
//! | `POST /v1/snapshots` | 201 and the [`SnapshotInfo`](super::snapshots::SnapshotInfo) of a new snapshot file of the stable state |
//! | `GET /v1/snapshots` | `{"snapshots": [SnapshotInfo, ..]}` by height |
//! | `GET /v1/snapshots/{id}` | the snapshot file (`tidemark snapshot verify` checks it) |
//! | `POST /v1/snapshots/schedule` `{"start_height"?, "end_height"?, "spacing"?, "description"?, "of"?}` | 201 and the stored request with its `request_id`; 409 for a duplicate, 400 for an invalid range |
//! | `GET /v1/snapshots/requests[?start_id=N][&limit=N]` | `{"requests": [..], "next_id": n\|null}` |
//! | `GET /v1/snapshots/requests/{id}` | the request, `active` or `done` (kept until deleted), and its snapshots, each `pending` or `final` |
//! | `DELETE /v1/snapshots/requests/{id}` | the removed request (its snapshots go back to retention); 404 if unknown |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /v1/admin/force-new-view` `{"confirm": "the silent members are gone"}` | the operator's way out of a majority loss: evicts every member this node has not heard from lately, without a majority; `{"evicted": [{"peer_id", "incarnation"}], "members"}`; 400 without the confirmation, 409 when not a member |
//! | `GET /healthz` | 200 while the node runs, 503 once it stopped (no token needed) |
//! | `GET /readyz` | 200 for a member that is not isolated, else 503 with why (no token needed) |
//!
//! A refused write gets 503 when it may succeed later (the node is joining, or its own ops
//! are not back yet after a rejoin), 409 when it will not (the node is leaving or left, or
//! its data dir is older than what the network has of it: restored from a backup, it must
//! be restarted with `--restored-backup`), 403 on an archiver or a node not on the writers
//! list, 400 for `applied:K` with K above the members in good standing (nothing is
//! written).
//!
//! Every error is a 4xx or 5xx with `{"error": "<reason>"}`. Every validation error is 400:
//! a body that is not JSON or not of the call's shape (a missing, mistyped or unknown
//! field), an empty key, a key over [`MAX_KEY_BYTES`](super::views::MAX_KEY_BYTES), a
//! value over [`MAX_VALUE_BYTES`](super::views::MAX_VALUE_BYTES), a bad query parameter or
//! a request id that is not a number. Bodies over [`MAX_BODY_BYTES`] get 413, bodies not
//! sent as `application/json` 415. With a token
//! ([`NodeConfig::api_token`](super::NodeConfig)), every call but `/healthz` and `/readyz`
//! needs `Authorization: Bearer <token>` and gets 401 without it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Deserialize;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt as _;

use super::schedule::{ScheduleError, ScheduleRequest};
use super::views::{check_key, At, KeyView, Page, WriteBody};
use super::{
    NodeError, NodeHandle, WriteConcern, WriteError, DEFAULT_WRITE_TIMEOUT, MAX_WRITE_TIMEOUT,
};
use crate::replica::WriteRefused;

/// Largest request body accepted: room for the longest key and value even when JSON
/// escapes every character of them.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The 400 for a body that is not JSON, or not of the call's shape; other rejections (too
/// large: 413, not `application/json`: 415) keep their status.
fn bad_body(e: JsonRejection) -> ApiError {
    let status = match &e {
        JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
            StatusCode::BAD_REQUEST
        }
        other => other.status(),
    };
    ApiError(status, e.body_text())
}

/// An API error: a status and a reason, sent as `{"error": reason}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// 507 when a snapshot file could not be written for a full disk, else 503.
impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::Snapshot(crate::snapshot::SnapshotError::Io(io))
                if super::storage::is_disk_full(io) =>
            {
                StatusCode::INSUFFICIENT_STORAGE
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

/// The status of a refused write: 503 when waiting helps (the node is joining, or its own
/// ops are not back yet after a rejoin: it writes again once they are), 409 when the node
/// will not write again by itself (it is leaving or left, or its data dir is older than
/// what the network has of it: writes stay refused under this identity until the node is
/// restarted with `--restored-backup`), 403 for an archiver.
impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let status = match &e {
            WriteError::Refused(WriteRefused::Joining | WriteRefused::OwnOpsMissing { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            WriteError::Refused(
                WriteRefused::Leaving | WriteRefused::Left | WriteRefused::DataDirBehind { .. },
            ) => StatusCode::CONFLICT,
            WriteError::Archiver | WriteError::Refused(WriteRefused::NotWriter) => {
                StatusCode::FORBIDDEN
            }
            WriteError::NotDurable(_) | WriteError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            WriteError::DiskFull(_) | WriteError::NotStored { .. } => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            WriteError::TooFewMembers { .. } => StatusCode::BAD_REQUEST,
            WriteError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError(status, e.to_string())
    }
}

/// Refuses a request that does not carry the API token (when there is one) with 401.
async fn require_token(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    // probes run without credentials, and tell nothing but whether the node is up
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let reason = match given {
        None => "this API needs an Authorization: Bearer <token> header",
        Some(given) if !same_secret(given.as_bytes(), token.as_bytes()) => "wrong API token",
        Some(_) => return next.run(request).await,
    };
    let mut response = ApiError(StatusCode::UNAUTHORIZED, reason.into()).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API's routes over a node handle; with `token`, every call must carry it.
pub fn router(node: NodeHandle, token: Option<Arc<str>>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/ops", post(write))
        .route("/v1/state", get(state))
        .route("/v1/state/", get(empty_key))
        .route("/v1/state/{*key}", get(read_key))
        .route("/v1/network-map", get(network_map))
        .route("/v1/snapshot-point/watch", get(watch))
        .route("/v1/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/v1/snapshots/{id}", get(download_snapshot))
        .route("/v1/snapshots/schedule", post(schedule_snapshots))
        .route("/v1/snapshots/requests", get(snapshot_requests))
        .route(
            "/v1/snapshots/requests/{id}",
            get(snapshot_request).delete(unschedule),
        )
        .route("/v1/admin/force-new-view", post(force_new_view))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(token, require_token))
        .with_state(node)
}

/// Binds `addr` and serves the API until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    node: NodeHandle,
    token: Option<Arc<str>>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NodeError> {
    let api_err = |e: std::io::Error| NodeError::Api {
        addr,
        reason: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(api_err)?;
    let bound = listener.local_addr().map_err(api_err)?;
    let app = router(node, token);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    });
    Ok((bound, task))
}

async fn status(State(node): State<NodeHandle>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.status().await?))
}

/// `POST /v1/ops?wait=stored|applied:K|stable[&timeout_ms=N]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    wait: Option<String>,
    timeout_ms: Option<u64>,
}

async fn write(
    State(node): State<NodeHandle>,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Json<WriteBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "{}; use ?wait=stored, applied:K or stable, and optionally timeout_ms=N",
                e.body_text()
            ),
        )
    })?;
    let concern = match &query.wait {
        Some(wait) => wait
            .parse::<WriteConcern>()
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?,
        None => WriteConcern::Stored,
    };
    let max_ms = MAX_WRITE_TIMEOUT.as_millis() as u64;
    let timeout = match query.timeout_ms {
        Some(ms) if ms == 0 || ms > max_ms => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("timeout_ms must be between 1 and {max_ms}, not {ms}"),
            ))
        }
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_WRITE_TIMEOUT,
    };
    let Json(body) = body.map_err(bad_body)?;
    body.check()
        .map_err(|reason| ApiError(StatusCode::BAD_REQUEST, reason))?;
    match node
        .put_with(&body.key, body.value.as_deref(), concern, timeout)
        .await
    {
        Ok(id) => Ok((StatusCode::CREATED, Json(id)).into_response()),
        Err(WriteError::Timeout {
            origin,
            seq,
            concern,
        }) => {
            // the op is stored and kept: say which it is, so the caller can follow it
            let error = WriteError::Timeout {
                origin: origin.clone(),
                seq,
                concern,
            }
            .to_string();
            let body = serde_json::json!({ "error": error, "origin": origin, "seq": seq });
            Ok((StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    at: Option<At>,
    start_key: Option<String>,
    limit: Option<usize>,
}

/// Most entries in one page of `GET /v1/state`.
pub const MAX_PAGE: usize = 10_000;

async fn state(
    State(node): State<NodeHandle>,
    query: Result<Query<StateQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "{}; use ?at=snapshot or ?at=applied, and optionally start_key=KEY and limit=N",
                e.body_text()
            ),
        )
    })?;
    if let Some(limit) = query.limit {
        if limit == 0 || limit > MAX_PAGE {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("limit must be between 1 and {MAX_PAGE}, not {limit}"),
            ));
        }
    }
    let page = Page {
        start_key: query.start_key,
        limit: query.limit,
    };
    Ok(Json(
        node.state_page(query.at.unwrap_or(At::Snapshot), page)
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    at: Option<At>,
}

async fn empty_key() -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "the key is empty".into())
}

/// One key at the snapshot point (default) or in the applied state: 200 with its value, or
/// 404 with the cut that was read if the key is not live there.
async fn read_key(
    State(node): State<NodeHandle>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(key) = key.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Query(query) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{}; use ?at=snapshot or ?at=applied", e.body_text()),
        )
    })?;
    check_key(&key).map_err(|reason| ApiError(StatusCode::BAD_REQUEST, reason))?;
    let at = query.at.unwrap_or(At::Snapshot);
    // the page of one entry that starts at the key holds it, if it is live
    let page = Page {
        start_key: Some(key.clone()),
        limit: Some(1),
    };
    let view = node.state_page(at, page).await?;
    match view.entries.into_iter().next() {
        Some(entry) if entry.key == key => Ok(Json(KeyView {
            key,
            value: entry.value,
            at: view.at,
            digest: view.digest,
        })
        .into_response()),
        _ => {
            let state = match at {
                At::Snapshot => "the stable state",
                At::Applied => "the applied state",
            };
            Ok((
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({
                    "error": format!("no key {key:?} in {state}"),
                    "at": view.at,
                })),
            )
                .into_response())
        }
    }
}

/// Liveness: 200 while the node's event loop runs.
async fn healthz(State(node): State<NodeHandle>) -> Result<impl IntoResponse, ApiError> {
    if node.is_running() {
        Ok(Json(serde_json::json!({ "status": "ok" })))
    } else {
        Err(NodeError::Stopped.into())
    }
}

/// Readiness: 200 for a member that is not isolated; 503 with the reason otherwise.
async fn readyz(State(node): State<NodeHandle>) -> Result<Response, ApiError> {
    let ready = node.readiness().await?;
    Ok(match ready.reason() {
        None => Json(ready).into_response(),
        Some(reason) => {
            let mut body = serde_json::to_value(&ready).unwrap_or_default();
            body["error"] = reason.into();
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    })
}

/// `POST /v1/admin/force-new-view` `{"confirm": "the silent members are gone"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceNewViewBody {
    confirm: String,
}

/// What the body of `POST /v1/admin/force-new-view` must confirm.
pub const FORCE_NEW_VIEW_CONFIRMATION: &str = "the silent members are gone";

async fn force_new_view(
    State(node): State<NodeHandle>,
    body: Result<Json<ForceNewViewBody>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let confirmed = body
        .ok()
        .is_some_and(|Json(b)| b.confirm == FORCE_NEW_VIEW_CONFIRMATION);
    if !confirmed {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "forcing a new view evicts every member this node does not hear from, without a majority: if they are alive behind a partition, both sides decide on their own and one side's stable writes are lost when they meet; send {{\"confirm\": \"{FORCE_NEW_VIEW_CONFIRMATION}\"}} only if they are gone for good"
            ),
        ));
    }
    match node.force_new_view().await {
        Ok(forced) => Ok(Json(forced)),
        Err(e @ NodeError::NotMember(_)) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
        Err(e) => Err(e.into()),
    }
}

async fn create_snapshot(State(node): State<NodeHandle>) -> Result<impl IntoResponse, ApiError> {
    let info = node.create_snapshot().await.map_err(snapshot_error)?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list_snapshots(State(node): State<NodeHandle>) -> Result<impl IntoResponse, ApiError> {
    let snapshots = node.snapshots().await.map_err(snapshot_error)?;
    Ok(Json(serde_json::json!({ "snapshots": snapshots })))
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        ApiError(status, e.to_string())
    }
}

async fn schedule_snapshots(
    State(node): State<NodeHandle>,
    body: Result<Json<ScheduleRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body.map_err(bad_body)?;
    let added = node.schedule_snapshots(request).await?;
    Ok((StatusCode::CREATED, Json(added)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsQuery {
    start_id: Option<u64>,
    limit: Option<usize>,
}

/// Most schedule requests in one page.
pub const MAX_REQUESTS_PAGE: usize = 1_000;

async fn snapshot_requests(
    State(node): State<NodeHandle>,
    query: Result<Query<RequestsQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{}; use ?start_id=N&limit=N", e.body_text()),
        )
    })?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_REQUESTS_PAGE {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_REQUESTS_PAGE}, not {limit}"),
        ));
    }
    let (requests, next_id) = node
        .snapshot_requests(query.start_id.unwrap_or(0), limit)
        .await?;
    Ok(Json(
        serde_json::json!({ "requests": requests, "next_id": next_id }),
    ))
}

fn request_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("request id {id:?} is not a number"),
        )
    })
}

async fn snapshot_request(
    State(node): State<NodeHandle>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = request_id(&id)?;
    let view = node
        .snapshot_request(id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no schedule request {id}")))?;
    Ok(Json(view))
}

async fn unschedule(
    State(node): State<NodeHandle>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = request_id(&id)?;
    Ok(Json(node.unschedule(id).await?))
}

fn snapshot_error(e: NodeError) -> ApiError {
    match e {
        NodeError::Snapshot(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        other => other.into(),
    }
}

/// The snapshot file, streamed in 64 KiB pieces.
async fn download_snapshot(
    State(node): State<NodeHandle>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    use tokio::io::AsyncReadExt;
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no snapshot {id:?}"));
    let path = node.snapshot_file(&id).ok_or_else(not_found)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| not_found())?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let pieces = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(pieces),
    ))
}

async fn network_map(State(node): State<NodeHandle>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.network_map().await?))
}

async fn watch(
    State(node): State<NodeHandle>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = WatchStream::new(node.watch_snapshot_point()).map(|view| {
        Ok(Event::default()
            .event("snapshot-point")
            .json_data(&view)
            .unwrap_or_else(|_| Event::default().comment("unencodable")))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn metrics(State(node): State<NodeHandle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics().encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: WriteRefused) -> ApiError {
        ApiError::from(WriteError::Refused(reason))
    }

    #[test]
    fn a_write_refused_until_the_own_ops_are_back_is_503_and_says_so() {
        let ApiError(status, message) = refused(WriteRefused::OwnOpsMissing {
            applied: 3,
            highest: 7,
        });
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(message.contains("3..7"), "{message}");
        assert!(message.contains("writes again"), "{message}");
    }

    #[test]
    fn a_write_refused_because_the_data_dir_is_behind_is_409_and_names_the_way_out() {
        let ApiError(status, message) = refused(WriteRefused::DataDirBehind { stored: 4, seen: 9 });
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(message.contains("--restored-backup"), "{message}");
        assert!(message.contains('4') && message.contains('9'), "{message}");
    }

    #[test]
    fn the_other_refusals_keep_their_status() {
        let status = |e: WriteError| ApiError::from(e).0;
        assert_eq!(
            status(WriteError::Refused(WriteRefused::Joining)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(WriteError::Refused(WriteRefused::Leaving)),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(WriteError::Refused(WriteRefused::Left)),
            StatusCode::CONFLICT
        );
        assert_eq!(status(WriteError::Archiver), StatusCode::FORBIDDEN);
        assert_eq!(status(WriteError::Stopped), StatusCode::SERVICE_UNAVAILABLE);
    }
}
