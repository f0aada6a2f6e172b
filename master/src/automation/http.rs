//! `http_client()` on reqwest (rustls, certificates verified unless `skip_verify`):
//! Velociraptor's arguments and rows `{Url, Content, Response, Headers}`, one row per
//! `chunk_size` of the body. URLs are tried in order, the next one after a transport
//! error or a non-2xx answer; a transport error is a row with Response 500 and the error
//! as Content, as Velociraptor's. Every request has a timeout, and a body is read at most
//! to [`MAX_BODY_BYTES`], so a stalled or endless peer cannot hold a query.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use serde_json::{json, Map, Value};
use talon_vql::engine::{HostError, HostResult};

/// Default and largest rows of body, bytes.
const DEFAULT_CHUNK: usize = 4 * 1024 * 1024;
const MAX_CHUNK: usize = 16 * 1024 * 1024;
/// Most of a body one call reads.
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// Default timeout of one request, seconds.
const DEFAULT_TIMEOUT_SECS: u64 = 60;
const USER_AGENT: &str = concat!("Talon/", env!("CARGO_PKG_VERSION"));

/// One request's settings, from the arguments and (`secret=`) an HTTP Secrets secret.
#[derive(Debug, Default)]
pub struct Request {
    pub urls: Vec<String>,
    pub method: String,
    pub data: Option<String>,
    pub params: Map<String, Value>,
    pub headers: BTreeMap<String, String>,
    pub skip_verify: bool,
    pub root_ca: String,
    pub timeout: Duration,
    pub chunk: usize,
    pub user_agent: String,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Request {
    /// The request of `http_client(...)`'s arguments.
    pub fn from_args(args: &Map<String, Value>) -> Result<Request, String> {
        let urls = match args.get("url") {
            Some(Value::Array(a)) => a.iter().map(text).collect(),
            Some(v) => vec![text(v)],
            None => Vec::new(),
        };
        let method = args
            .get("method")
            .map(text)
            .unwrap_or_default()
            .to_ascii_uppercase();
        let method = if method.is_empty() {
            "GET".to_string()
        } else {
            method
        };
        if !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"].contains(&method.as_str())
        {
            return Err(format!("method {method:?} is not an HTTP method"));
        }
        let mut headers = BTreeMap::new();
        match args.get("headers") {
            Some(Value::Object(h)) => {
                for (k, v) in h {
                    headers.insert(k.clone(), text(v));
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => return Err("headers must be a dict".into()),
        }
        let params = match args.get("params") {
            Some(Value::Object(p)) => p.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err("params must be a dict".into()),
        };
        let number = |k: &str| args.get(k).and_then(Value::as_f64).filter(|n| *n > 0.0);
        Ok(Request {
            urls,
            method,
            data: args.get("data").filter(|v| !v.is_null()).map(text),
            params,
            headers,
            skip_verify: args
                .get("skip_verify")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                || args
                    .get("disable_ssl_security")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            root_ca: args.get("root_ca").map(text).unwrap_or_default(),
            timeout: Duration::from_secs_f64(
                number("timeout").unwrap_or(DEFAULT_TIMEOUT_SECS as f64),
            ),
            chunk: number("chunk_size").map_or(DEFAULT_CHUNK, |n| (n as usize).clamp(1, MAX_CHUNK)),
            user_agent: args.get("user_agent").map(text).unwrap_or_default(),
        })
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(30)))
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(if self.user_agent.is_empty() {
                USER_AGENT
            } else {
                &self.user_agent
            });
        if self.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        if !self.root_ca.trim().is_empty() {
            let cert = reqwest::Certificate::from_pem(self.root_ca.as_bytes())
                .map_err(|e| format!("root_ca is not a PEM certificate: {e}"))?;
            b = b.add_root_certificate(cert);
        }
        b.build().map_err(|e| format!("HTTP client: {e}"))
    }
}

/// An error with its causes (`error sending request: ...: invalid peer certificate`):
/// reqwest's own text says only that the request failed.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn error_row(url: &str, e: impl std::fmt::Display) -> Value {
    json!({"Url": url, "Content": e.to_string(), "Response": 500, "Headers": {}})
}

/// Runs a request: its rows.
pub fn run(req: Request) -> BoxStream<'static, HostResult<Value>> {
    async_stream::stream! {
        if req.urls.is_empty() {
            yield Err(HostError::Refused("url is required".into()));
            return;
        }
        let client = match req.client() {
            Ok(c) => c,
            Err(e) => {
                yield Err(HostError::Refused(e));
                return;
            }
        };
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let last = req.urls.len() - 1;
        for (i, url) in req.urls.iter().enumerate() {
            let mut r = client.request(method.clone(), url);
            for (k, v) in &req.headers {
                r = r.header(k, v);
            }
            if method == reqwest::Method::GET {
                let q: Vec<(String, String)> = req.params.iter().map(|(k, v)| (k.clone(), text(v))).collect();
                r = r.query(&q);
            } else if let Some(d) = &req.data {
                r = r.body(d.clone());
            } else if !req.params.is_empty() {
                let q: Vec<(String, String)> = req.params.iter().map(|(k, v)| (k.clone(), text(v))).collect();
                r = r.form(&q);
            }
            let mut resp = match r.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::debug!(url = %url, error = %e, "http_client request failed");
                    if i < last {
                        continue;
                    }
                    yield Ok(error_row(url, with_causes(&e)));
                    return;
                }
            };
            let status = resp.status().as_u16();
            if !resp.status().is_success() && i < last {
                continue;
            }
            let headers: Map<String, Value> = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(String::from_utf8_lossy(v.as_bytes()).into())))
                .collect();
            let row = |content: &[u8]| json!({
                "Url": url,
                "Content": String::from_utf8_lossy(content),
                "Response": status,
                "Headers": headers,
            });
            let (mut buf, mut total, mut emitted) = (Vec::new(), 0usize, false);
            loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        total += bytes.len();
                        if total > MAX_BODY_BYTES {
                            yield Ok(error_row(url, format!("response body over {MAX_BODY_BYTES} bytes; stopped reading")));
                            return;
                        }
                        buf.extend_from_slice(&bytes);
                        while buf.len() >= req.chunk {
                            let rest = buf.split_off(req.chunk);
                            yield Ok(row(&buf));
                            emitted = true;
                            buf = rest;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        yield Ok(error_row(url, format!("reading the response: {}", with_causes(&e))));
                        return;
                    }
                }
            }
            if !buf.is_empty() || !emitted {
                yield Ok(row(&buf));
            }
            return;
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        let args = json!({"url": "http://127.0.0.1:1/", "method": "post", "headers": {"A": 1}, "timeout": 2});
        let r = Request::from_args(args.as_object().unwrap()).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.headers["A"], "1");
        assert_eq!(r.timeout, Duration::from_secs(2));
        let bad = json!({"url": "x", "method": "BREW"});
        assert!(Request::from_args(bad.as_object().unwrap())
            .unwrap_err()
            .contains("BREW"));
    }
}
