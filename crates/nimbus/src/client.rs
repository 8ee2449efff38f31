//! Typed HTTP client of the nimbus API, used by the CLI commands.

use std::time::Duration;

use nimbus_api::{CreateInstance, ErrorBody, EventList, Instance, InstanceList, Node, NodeList};
use serde::de::DeserializeOwned;

/// Errors of a client call, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the nimbus server at {server}: {detail}\n  (is `nimbus up` running? set --server or NIMBUS_SERVER to point elsewhere)")]
    Unreachable { server: String, detail: String },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            server: self.base.clone(),
            detail: e.to_string(),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => ClientError::Api {
                status,
                code: serde_json::to_value(b.error.code)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                message: b.error.message,
            },
            Err(_) => ClientError::Api {
                status,
                code: String::new(),
                message: format!("HTTP {status}: {text}"),
            },
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates an instance; returns it and whether it was newly created.
    pub async fn create_instance(
        &self,
        req: &CreateInstance,
    ) -> Result<(Instance, bool), ClientError> {
        let resp = self
            .send(self.http.post(self.url("/v1/instances")).json(req))
            .await?;
        let created = resp.status().as_u16() == 201;
        let inst = resp
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((inst, created))
    }

    pub async fn list_instances(
        &self,
        state: Option<&str>,
        node: Option<&str>,
    ) -> Result<Vec<Instance>, ClientError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = vec![("limit", "1000".into())];
            if let Some(s) = state {
                q.push(("state", s.into()));
            }
            if let Some(n) = node {
                q.push(("node", n.into()));
            }
            if let Some(a) = &after {
                q.push(("after", a.clone()));
            }
            let page: InstanceList = self
                .json(self.http.get(self.url("/v1/instances")).query(&q))
                .await?;
            out.extend(page.items);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    pub async fn get_instance(&self, name: &str) -> Result<Instance, ClientError> {
        self.json(self.http.get(self.url(&format!("/v1/instances/{name}"))))
            .await
    }

    /// `action` is `stop`, `start` or `restart`.
    pub async fn instance_action(&self, name: &str, action: &str) -> Result<Instance, ClientError> {
        self.json(
            self.http
                .post(self.url(&format!("/v1/instances/{name}/{action}"))),
        )
        .await
    }

    pub async fn delete_instance(&self, name: &str) -> Result<Instance, ClientError> {
        self.json(self.http.delete(self.url(&format!("/v1/instances/{name}"))))
            .await
    }

    pub async fn logs(&self, name: &str, tail_bytes: u64) -> Result<Vec<u8>, ClientError> {
        let resp = self
            .send(
                self.http
                    .get(self.url(&format!("/v1/instances/{name}/logs")))
                    .query(&[("tail_bytes", tail_bytes)]),
            )
            .await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>, ClientError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = vec![("limit", "1000".into())];
            if let Some(a) = &after {
                q.push(("after", a.clone()));
            }
            let page: NodeList = self
                .json(self.http.get(self.url("/v1/nodes")).query(&q))
                .await?;
            out.extend(page.items);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    pub async fn get_node(&self, name: &str) -> Result<Node, ClientError> {
        self.json(self.http.get(self.url(&format!("/v1/nodes/{name}"))))
            .await
    }

    pub async fn events(&self, after: u64, wait_secs: u64) -> Result<EventList, ClientError> {
        self.json(
            self.http
                .get(self.url("/v1/events"))
                .timeout(Duration::from_secs(wait_secs + 10))
                .query(&[("after", after), ("limit", 1000), ("wait_secs", wait_secs)]),
        )
        .await
    }
}

impl ApiClient {
    /// Uploads one image file, calling `progress(bytes_sent)` as it goes.
    pub async fn upload_image_file(
        &self,
        name: &str,
        file: &str,
        path: &std::path::Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<(), ClientError> {
        use futures_util::StreamExt;
        let f = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Api {
                status: 0,
                code: String::new(),
                message: format!("opening {}: {e}", path.display()),
            })?;
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        let mut sent = 0u64;
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).map(move |chunk| {
            if let Ok(c) = &chunk {
                sent += c.len() as u64;
                progress(sent);
            }
            chunk
        });
        self.send(
            self.http
                .put(self.url(&format!("/v1/images/{name}/files/{file}")))
                .header("content-type", "application/octet-stream")
                .header("content-length", len)
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await
        .map(drop)
    }

    pub async fn register_image(
        &self,
        req: &nimbus_api::RegisterImage,
    ) -> Result<nimbus_api::Image, ClientError> {
        self.json(self.http.post(self.url("/v1/images")).json(req))
            .await
    }

    pub async fn list_images(&self) -> Result<Vec<nimbus_api::Image>, ClientError> {
        let l: nimbus_api::ImageList = self.json(self.http.get(self.url("/v1/images"))).await?;
        Ok(l.items)
    }

    pub async fn get_image(&self, name: &str) -> Result<nimbus_api::Image, ClientError> {
        self.json(self.http.get(self.url(&format!("/v1/images/{name}"))))
            .await
    }

    pub async fn delete_image(&self, name: &str) -> Result<nimbus_api::Image, ClientError> {
        self.json(self.http.delete(self.url(&format!("/v1/images/{name}"))))
            .await
    }
}

impl ApiClient {
    /// GET a JSON resource.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(self.http.get(self.url(path))).await
    }

    /// POST JSON, decode the JSON answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        self.json(self.http.post(self.url(path)).json(body)).await
    }

    /// Streams a GET into a file, calling `progress(done, total)`.
    pub async fn download(
        &self,
        path: &str,
        dest: &std::path::Path,
        progress: impl Fn(u64, u64),
    ) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt;
        let mut resp = self.send(self.http.get(self.url(path))).await?;
        let total = resp.content_length().unwrap_or(0);
        let io =
            |e: std::io::Error| ClientError::Decode(format!("writing {}: {e}", dest.display()));
        let mut f = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut done = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?
        {
            f.write_all(&chunk).await.map_err(io)?;
            done += chunk.len() as u64;
            progress(done, total);
        }
        f.sync_all().await.map_err(io)?;
        Ok(())
    }
}
