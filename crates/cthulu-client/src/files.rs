//! Files of a sandbox: streamed upload and download, directory listings, removal.
//!
//! Contents travel as raw HTTP bodies: an upload streams from any `AsyncRead` without
//! holding the file in memory, a download is a byte stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cthulu_types::{DirListing, FileWritten};
use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::{Body, Method, Response};
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::{ClientError, CthuluClient};

/// Called with the number of bytes sent (upload) so far.
pub type ProgressCallback = Box<dyn Fn(u64) + Send + Sync + 'static>;

/// How an upload is written.
#[derive(Default)]
pub struct PutFileOptions {
    /// Permission bits of the new file (`0o644` when absent, the server's default).
    pub mode: Option<u32>,
    /// Create missing parent directories.
    pub create_parents: bool,
    /// Told how many bytes were sent after every chunk.
    pub progress: Option<ProgressCallback>,
}

/// Upload chunks are read this large; big enough for throughput, small enough for
/// progress to move.
const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// A file being downloaded: its size and mode from the headers, then its bytes.
pub struct FileDownload {
    /// `Content-Length`, when the server sent one.
    pub size: Option<u64>,
    /// `X-Cthulu-Mode`, the file's permission bits.
    pub mode: Option<u32>,
    url: String,
    response: Response,
}

impl std::fmt::Debug for FileDownload {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FileDownload")
            .field("size", &self.size)
            .field("mode", &self.mode)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl FileDownload {
    /// The contents as a stream of chunks.
    pub fn into_stream(self) -> Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>> {
        let url = self.url;
        Box::pin(
            self.response
                .bytes_stream()
                .map_err(move |source| ClientError::Request {
                    method: "GET".into(),
                    url: url.clone(),
                    source,
                }),
        )
    }

    /// The contents as an `AsyncRead`.
    pub fn into_reader(self) -> impl AsyncRead + Send + Unpin {
        StreamReader::new(self.into_stream().map_err(std::io::Error::other))
    }
}

impl CthuluClient {
    /// `PUT /api/v1/sandboxes/{id}/files?path=…`: streams `reader` into the file at `path`.
    pub async fn put_file<R>(
        &self,
        sandbox_id: &str,
        path: &str,
        reader: R,
        options: PutFileOptions,
    ) -> Result<FileWritten, ClientError>
    where
        R: AsyncRead + Send + 'static,
    {
        let mut url = self.sandbox_url(sandbox_id, &["files"]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("path", path);
            if let Some(mode) = options.mode {
                query.append_pair("mode", &format!("{mode:04o}"));
            }
            if options.create_parents {
                query.append_pair("create_parents", "true");
            }
        }
        let sent = Arc::new(AtomicU64::new(0));
        let progress = options.progress;
        let chunks =
            ReaderStream::with_capacity(reader, UPLOAD_CHUNK_BYTES).inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    let total =
                        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                    if let Some(progress) = &progress {
                        progress(total);
                    }
                }
            });
        let request = self
            .request(Method::PUT, url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::wrap_stream(chunks));
        self.send_json(request).await
    }

    /// `GET /api/v1/sandboxes/{id}/files?path=…`: the file's size, mode and byte stream.
    pub async fn get_file(
        &self,
        sandbox_id: &str,
        path: &str,
    ) -> Result<FileDownload, ClientError> {
        let mut url = self.sandbox_url(sandbox_id, &["files"]);
        url.query_pairs_mut().append_pair("path", path);
        let response = self.send(self.request(Method::GET, url.clone())).await?;
        let mode = response
            .headers()
            .get("x-cthulu-mode")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| u32::from_str_radix(value.trim(), 8).ok());
        Ok(FileDownload {
            size: response.content_length(),
            mode,
            url: url.to_string(),
            response,
        })
    }

    /// `GET /api/v1/sandboxes/{id}/dirs?path=…`.
    pub async fn read_dir(&self, sandbox_id: &str, path: &str) -> Result<DirListing, ClientError> {
        let mut url = self.sandbox_url(sandbox_id, &["dirs"]);
        url.query_pairs_mut().append_pair("path", path);
        self.get_json(url).await
    }

    /// `DELETE /api/v1/sandboxes/{id}/files?path=…`; `recursive` for directories.
    pub async fn remove_file(
        &self,
        sandbox_id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ClientError> {
        let mut url = self.sandbox_url(sandbox_id, &["files"]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("path", path);
            if recursive {
                query.append_pair("recursive", "true");
            }
        }
        self.send_empty(self.request(Method::DELETE, url)).await
    }
}
