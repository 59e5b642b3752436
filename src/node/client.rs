//! A client of a node's HTTP API (SPEC §7.2), over plain HTTP/1.1 with hyper: what the
//! `tidemark status | members | get | put | del | watch | snapshot create|list|download`
//! commands use. Every HTTP detail of those commands lives here: the paths, the bearer
//! token, the JSON shapes, the server-sent events of the watch.
//!
//! One connection per call; a call waits at most [`Client::timeout`] for the node's answer
//! (for a download or a watch: for the answer to start).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::views::{At, KeyView, NetworkMapView, OpIdView, SnapshotPointView, StatusView};

/// What went wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API address is not an `http://host:port` URL.
    #[error("{url:?} is not an API URL ({reason}); give one like http://127.0.0.1:8000")]
    BadUrl { url: String, reason: String },
    /// No connection could be made.
    #[error("cannot reach the node at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The node did not answer in time.
    #[error("the node at {url} did not answer within {} s", .after.as_secs_f64())]
    Timeout { url: String, after: Duration },
    /// The connection broke, or the answer was not HTTP.
    #[error("talking to the node at {url}: {reason}")]
    Http { url: String, reason: String },
    /// The node answered with an error status.
    #[error("the node at {url} answered {status}: {reason}")]
    Api {
        url: String,
        status: u16,
        reason: String,
    },
    /// The node's answer was not the JSON expected.
    #[error("the node at {url} answered something that is not the expected JSON: {reason}")]
    BadAnswer { url: String, reason: String },
    /// Writing a downloaded file failed.
    #[error("writing the download: {0}")]
    Write(#[from] std::io::Error),
}

/// A snapshot as `POST /v1/snapshots` and `GET /v1/snapshots` describe it.
pub use super::snapshots::SnapshotInfo as SnapshotView;

#[derive(Deserialize)]
struct SnapshotList {
    snapshots: Vec<SnapshotView>,
}

/// A client of one node's API.
#[derive(Clone, Debug)]
pub struct Client {
    /// `host:port` to connect to.
    authority: String,
    /// The URL's path, without a trailing `/`, put before every call's path.
    prefix: String,
    token: Option<String>,
    /// How long a call waits for the node's answer.
    pub timeout: Duration,
}

impl Client {
    /// A client of the API at `url` (`http://host:port`, or just `host:port`), sending
    /// `token` as a bearer token when given.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let full = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = full
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(bad(&format!("{other} is not supported, only http"))),
            None => return Err(bad("no scheme")),
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        if uri.query().is_some() {
            return Err(bad("a query has no place in it"));
        }
        Ok(Self {
            authority: format!("{host}:{port}"),
            prefix: uri.path().trim_end_matches('/').to_string(),
            token,
            timeout: Duration::from_secs(30),
        })
    }

    /// The URL of the API, for messages.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.prefix)
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.get_json("/v1/status").await
    }

    /// `GET /v1/network-map`: every member this node's map holds.
    pub async fn network_map(&self) -> Result<NetworkMapView, ClientError> {
        self.get_json("/v1/network-map").await
    }

    /// The value of `key` in the stable state (`At::Snapshot`) or the applied state, `None`
    /// if the key has none there.
    pub async fn get(&self, key: &str, at: At) -> Result<Option<String>, ClientError> {
        let at = match at {
            At::Snapshot => "snapshot",
            At::Applied => "applied",
        };
        let path = format!("/v1/state/{}?at={at}", percent_encode(key));
        match self.get_json::<KeyView>(&path).await {
            Ok(entry) => Ok(Some(entry.value)),
            // 404: the key is not live in that state
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` under `key` (`None` deletes it); the op's id once the node stored it.
    pub async fn put(&self, key: &str, value: Option<&str>) -> Result<OpIdView, ClientError> {
        let body = serde_json::json!({ "key": key, "value": value });
        let response = self
            .call(Method::POST, "/v1/ops", Some(body.to_string()))
            .await?;
        self.json(response).await
    }

    /// `POST /v1/admin/force-new-view`, confirmed: the operator's way out of a majority
    /// loss (see `NodeHandle::force_new_view`).
    pub async fn force_new_view(&self) -> Result<super::ForcedView, ClientError> {
        let body = serde_json::json!({ "confirm": super::http::FORCE_NEW_VIEW_CONFIRMATION });
        let response = self
            .call(
                Method::POST,
                "/v1/admin/force-new-view",
                Some(body.to_string()),
            )
            .await?;
        self.json(response).await
    }

    /// `POST /v1/snapshots`: a new snapshot of the stable state.
    pub async fn create_snapshot(&self) -> Result<SnapshotView, ClientError> {
        let response = self.call(Method::POST, "/v1/snapshots", None).await?;
        self.json(response).await
    }

    /// `GET /v1/snapshots`: the node's snapshots by height.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotView>, ClientError> {
        let list: SnapshotList = self.get_json("/v1/snapshots").await?;
        Ok(list.snapshots)
    }

    /// Streams the snapshot file `id` into `out`; the number of bytes written.
    pub async fn download_snapshot(
        &self,
        id: &str,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<u64, ClientError> {
        let path = format!("/v1/snapshots/{}", percent_encode(id));
        let mut body = self.call(Method::GET, &path, None).await?.into_body();
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.http_error(e))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).await?;
                written += data.len() as u64;
            }
        }
        out.flush().await?;
        Ok(written)
    }

    /// Follows `GET /v1/snapshot-point/watch`: the current snapshot point, then one per
    /// change.
    pub async fn watch(&self) -> Result<Watch, ClientError> {
        let response = self
            .call(Method::GET, "/v1/snapshot-point/watch", None)
            .await?;
        Ok(Watch {
            url: self.url(),
            body: response.into_body(),
            buffer: Vec::new(),
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.call(Method::GET, path, None).await?;
        self.json(response).await
    }

    /// Reads a whole answer as JSON, within the timeout.
    async fn json<T: DeserializeOwned>(
        &self,
        response: Response<Incoming>,
    ) -> Result<T, ClientError> {
        let body = tokio::time::timeout(self.timeout, response.into_body().collect())
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| self.http_error(e))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer {
            url: self.url(),
            reason: e.to_string(),
        })
    }

    /// Sends one request on a new connection; the answer once its head is in and its
    /// status is a success, or the node's error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<String>,
    ) -> Result<Response<Incoming>, ClientError> {
        let response = tokio::time::timeout(self.timeout, self.send(method, path, json))
            .await
            .map_err(|_| self.timed_out())??;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = tokio::time::timeout(self.timeout, response.into_body().collect())
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(ClientError::Api {
            url: self.url(),
            status: status.as_u16(),
            reason: error_reason(status, &body),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        json: Option<String>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.url(),
                reason: e.to_string(),
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_error(e))?;
        // the connection is driven beside the request, and ends with it
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(json) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|e| self.http_error(e))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.http_error(e))
    }

    fn http_error(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            url: self.url(),
            reason: e.to_string(),
        }
    }

    fn timed_out(&self) -> ClientError {
        ClientError::Timeout {
            url: self.url(),
            after: self.timeout,
        }
    }
}

/// The reason of an error answer: the `error` of the API's `{"error": ..}`, or the status
/// and the start of whatever else came.
fn error_reason(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ApiError {
        error: String,
    }
    if let Ok(e) = serde_json::from_slice::<ApiError>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).collect();
    let reason = status.canonical_reason().unwrap_or("error");
    if text.is_empty() {
        reason.to_string()
    } else {
        format!("{reason}: {text}")
    }
}

/// Percent-encodes everything but unreserved characters, for a path segment or a query
/// value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The snapshot-point watch: one [`SnapshotPointView`] per server-sent event.
pub struct Watch {
    url: String,
    body: Incoming,
    buffer: Vec<u8>,
}

impl Watch {
    /// The next snapshot point; `None` when the node closed the stream.
    pub async fn next(&mut self) -> Option<Result<SnapshotPointView, ClientError>> {
        loop {
            while let Some(event) = take_event(&mut self.buffer) {
                if let Some(data) = event_data(&event, "snapshot-point") {
                    return Some(
                        serde_json::from_str(&data).map_err(|e| ClientError::BadAnswer {
                            url: self.url.clone(),
                            reason: e.to_string(),
                        }),
                    );
                }
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Err(e) => {
                    return Some(Err(ClientError::Http {
                        url: self.url.clone(),
                        reason: e.to_string(),
                    }))
                }
            }
        }
    }
}

/// Takes the first whole event (up to a blank line) off the front of `buffer`.
fn take_event(buffer: &mut Vec<u8>) -> Option<String> {
    let (end, gap) = (0..buffer.len()).find_map(|i| {
        let rest = &buffer[i..];
        if rest.starts_with(b"\n\n") {
            Some((i, 2))
        } else if rest.starts_with(b"\r\n\r\n") {
            Some((i, 4))
        } else {
            None
        }
    })?;
    let event = String::from_utf8_lossy(&buffer[..end]).replace('\r', "");
    buffer.drain(..end + gap);
    Some(event)
}

/// The data of an event named `name` (its `data:` lines joined), `None` for any other
/// event or a comment.
fn event_data(event: &str, name: &str) -> Option<String> {
    let mut kind = "message";
    let mut data: Vec<&str> = Vec::new();
    for line in event.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => kind = value,
            "data" => data.push(value),
            _ => {}
        }
    }
    (kind == name && !data.is_empty()).then(|| data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_a_scheme() {
        let c = Client::new("http://127.0.0.1:8000", None).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:8000");
        let c = Client::new("localhost:9", None).unwrap();
        assert_eq!(c.url(), "http://localhost:9");
        let c = Client::new("http://example.org/tidemark/", None).unwrap();
        assert_eq!(c.url(), "http://example.org:80/tidemark");
        for bad in ["https://127.0.0.1:1", "http://", "", "http://a b"] {
            assert!(
                matches!(Client::new(bad, None), Err(ClientError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn events_are_cut_at_blank_lines_and_comments_skipped() {
        let mut buffer =
            b":keep-alive\n\nevent: snapshot-point\ndata: {\"a\":1}\n\nevent: snap".to_vec();
        let first = take_event(&mut buffer).unwrap();
        assert_eq!(event_data(&first, "snapshot-point"), None);
        let second = take_event(&mut buffer).unwrap();
        assert_eq!(
            event_data(&second, "snapshot-point").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(take_event(&mut buffer), None);
        assert_eq!(buffer, b"event: snap");
    }

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(percent_encode("plain-key_1.x~"), "plain-key_1.x~");
    }

    #[test]
    fn error_reasons_come_from_the_api_or_the_status() {
        assert_eq!(
            error_reason(StatusCode::CONFLICT, br#"{"error": "leaving"}"#),
            "leaving"
        );
        assert_eq!(error_reason(StatusCode::NOT_FOUND, b""), "Not Found");
        assert_eq!(
            error_reason(StatusCode::NOT_FOUND, b"<html>nope</html>"),
            "Not Found: <html>nope</html>"
        );
    }
}
