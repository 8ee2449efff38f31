//! HTTP client for the agent side of the API: register, heartbeat, assignments, logs.

use std::time::Duration;

use nimbus_api::{Assignments, ErrorBody, Heartbeat, Node, RegisterNode};

/// Errors talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("server answered {status}: {message}")]
    Api { status: u16, message: String },
}

pub struct ServerClient {
    base: String,
    http: reqwest::Client,
}

impl ServerClient {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        ServerClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    async fn check(url: &str, resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.message)
            .unwrap_or(text);
        let _ = url;
        Err(ClientError::Api { status, message })
    }

    /// Sends a request; a transport failure or an error status becomes a `ClientError`.
    async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(Self::transport(url))?;
        Self::check(url, resp).await
    }

    fn transport(url: &str) -> impl FnOnce(reqwest::Error) -> ClientError + '_ {
        move |source| ClientError::Transport {
            url: url.to_string(),
            source,
        }
    }

    pub async fn register(&self, req: &RegisterNode) -> Result<Node, ClientError> {
        let url = format!("{}/v1/nodes", self.base);
        let resp = self
            .send(
                &url,
                self.http
                    .post(&url)
                    .timeout(Duration::from_secs(10))
                    .json(req),
            )
            .await?;
        resp.json().await.map_err(Self::transport(&url))
    }

    pub async fn heartbeat(&self, node: &str, hb: &Heartbeat) -> Result<(), ClientError> {
        let url = format!("{}/v1/nodes/{node}/heartbeat", self.base);
        self.send(
            &url,
            self.http
                .post(&url)
                .timeout(Duration::from_secs(10))
                .json(hb),
        )
        .await
        .map(drop)
    }

    /// Long-polls the node's assignments: answers when they changed past `index`.
    pub async fn assignments(
        &self,
        node: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<Assignments, ClientError> {
        let mut url = format!(
            "{}/v1/nodes/{node}/assignments?wait_secs={}",
            self.base,
            wait.as_secs()
        );
        if let Some(i) = index {
            url.push_str(&format!("&index={i}"));
        }
        let resp = self
            .send(
                &url,
                self.http.get(&url).timeout(wait + Duration::from_secs(10)),
            )
            .await?;
        resp.json().await.map_err(Self::transport(&url))
    }

    pub async fn ship_logs(
        &self,
        instance: &str,
        generation: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let url = format!(
            "{}/v1/instances/{instance}/logs?generation={generation}&offset={offset}",
            self.base
        );
        self.send(
            &url,
            self.http
                .post(&url)
                .timeout(Duration::from_secs(10))
                .header("content-type", "application/octet-stream")
                .body(data),
        )
        .await
        .map(drop)
    }
}

impl ServerClient {
    /// Downloads one image file to `dest` (via a temporary file), returning its SHA-256.
    pub async fn download_image_file(
        &self,
        image: &str,
        file: &str,
        dest: &std::path::Path,
    ) -> Result<String, ClientError> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let url = format!("{}/v1/images/{image}/files/{file}", self.base);
        let mut resp = self.send(&url, self.http.get(&url)).await?;
        let tmp = dest.with_extension("part");
        let io = |e: std::io::Error| ClientError::Api {
            status: 0,
            message: format!("writing {}: {e}", tmp.display()),
        };
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut h = sha2::Sha256::new();
        while let Some(chunk) = resp.chunk().await.map_err(Self::transport(&url))? {
            h.update(&chunk);
            f.write_all(&chunk).await.map_err(io)?;
        }
        f.sync_all().await.map_err(io)?;
        tokio::fs::rename(&tmp, dest).await.map_err(io)?;
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Chunk-store traffic: nodes copy image chunks they lack from the server, and send
/// the server the backup chunks it lacks.
impl ServerClient {
    async fn bytes(&self, url: String) -> Result<Vec<u8>, ClientError> {
        let resp = self
            .send(&url, self.http.get(&url).timeout(Duration::from_secs(120)))
            .await?;
        Ok(resp.bytes().await.map_err(Self::transport(&url))?.to_vec())
    }

    pub async fn image_manifest(&self, image: &str) -> Result<nimbus_image::Manifest, ClientError> {
        let url = format!("{}/v1/store/images/{image}", self.base);
        let bytes = self.bytes(url.clone()).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Api {
            status: 0,
            message: format!("manifest of {image}: {e}"),
        })
    }

    pub async fn get_chunk(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        self.bytes(format!("{}/v1/store/chunks/{id}", self.base))
            .await
    }

    pub async fn missing_chunks(&self, ids: Vec<String>) -> Result<Vec<String>, ClientError> {
        let url = format!("{}/v1/store/chunks/missing", self.base);
        let resp = self
            .send(
                &url,
                self.http
                    .post(&url)
                    .timeout(Duration::from_secs(60))
                    .json(&serde_json::json!({ "ids": ids })),
            )
            .await?;
        let v: serde_json::Value = resp.json().await.map_err(Self::transport(&url))?;
        Ok(v["ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn put_chunk(&self, id: &str, bytes: Vec<u8>) -> Result<(), ClientError> {
        let url = format!("{}/v1/store/chunks/{id}", self.base);
        self.send(
            &url,
            self.http
                .put(&url)
                .timeout(Duration::from_secs(120))
                .header("content-type", "application/octet-stream")
                .body(bytes),
        )
        .await
        .map(drop)
    }

    pub async fn put_backup_manifest(
        &self,
        m: &nimbus_image::Manifest,
        instance: &str,
        name: &str,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/store/backups/{instance}/{name}", self.base);
        self.send(
            &url,
            self.http.put(&url).timeout(Duration::from_secs(60)).json(m),
        )
        .await
        .map(drop)
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<(), ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(
            &url,
            self.http
                .post(&url)
                .timeout(Duration::from_secs(30))
                .json(body),
        )
        .await
        .map(drop)
    }
}
