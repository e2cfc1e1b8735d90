//! Streaming answers (`Accept: application/x-ndjson`): one JSON object a
//! line, the job's output as it arrives, then its result or its error:
//!
//! ```text
//! {"type":"stdout","data":"<base64>"}
//! {"type":"stderr","data":"<base64>"}
//! {"type":"result","result":{...}}      or      {"type":"error","error":{...}}
//! ```
//!
//! Chunks are base64 so that binary output, and a UTF-8 character split
//! between two chunks, arrive exactly. A reader that goes away ends the
//! run: its VM is killed.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use vmhost::Stream;
use vmhost::api::{self, RunRequest, RunResult};
use vmhost::packages::Layer;

use super::error::ApiError;
use crate::door::{Chunk, Door};

pub const NDJSON: &str = "application/x-ndjson";

/// Chunks in flight between a job and its reader: enough to keep the
/// serial port busy, few enough that a slow reader slows the job.
const IN_FLIGHT: usize = 64;

fn line(value: serde_json::Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn chunk_line(chunk: &Chunk) -> Bytes {
    let kind = match chunk.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    line(serde_json::json!({ "type": kind, "data": api::base64(&chunk.data) }))
}

fn result_line(result: &RunResult) -> Bytes {
    line(serde_json::json!({ "type": "result", "result": result }))
}

fn response(body: Body) -> Response {
    ([(header::CONTENT_TYPE, NDJSON)], body).into_response()
}

/// A run whose output streams to the response as it arrives; `layer` is
/// its packages', made before the answer began (so that a set that
/// cannot be had is a status, not a line).
pub fn run(door: Arc<Door>, request: RunRequest, layer: Option<Layer>) -> Response {
    let (chunks, mut chunks_rx) = mpsc::channel::<Chunk>(IN_FLIGHT);
    let (lines, lines_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    tokio::spawn(async move {
        let run = door.run_with(request, layer, Some(chunks));
        tokio::pin!(run);
        let mut output_open = true;
        let last = loop {
            tokio::select! {
                chunk = chunks_rx.recv(), if output_open => match chunk {
                    Some(chunk) => {
                        if lines.send(chunk_line(&chunk)).await.is_err() {
                            // The reader is gone: dropping the run kills its VM.
                            return;
                        }
                    }
                    None => output_open = false,
                },
                result = &mut run => break result,
                () = lines.closed() => return,
            }
        };
        // Output sent before the result was known still goes first.
        while let Ok(chunk) = chunks_rx.try_recv() {
            if lines.send(chunk_line(&chunk)).await.is_err() {
                return;
            }
        }
        let last = match last {
            Ok(result) => result_line(&result),
            Err(e) => {
                let mut error = ApiError::from(e).json();
                error["type"] = "error".into();
                line(error)
            }
        };
        let _ = lines.send(last).await;
    });
    let body = futures_util::stream::unfold(lines_rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(line), rx))
    });
    response(Body::from_stream(body))
}

/// A result known whole (a session step), in the streaming shape.
pub fn finished(result: &RunResult) -> Response {
    let mut text = Vec::new();
    for (stream, bytes) in [
        (Stream::Stdout, stream_bytes(&result.stdout, &result.stdout_base64)),
        (Stream::Stderr, stream_bytes(&result.stderr, &result.stderr_base64)),
    ] {
        if !bytes.is_empty() {
            text.extend_from_slice(&chunk_line(&Chunk { stream, data: bytes }));
        }
    }
    text.extend_from_slice(&result_line(result));
    response(Body::from(text))
}

fn stream_bytes(text: &str, base64: &Option<String>) -> Vec<u8> {
    use base64::Engine as _;
    match base64 {
        Some(encoded) => base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_default(),
        None => text.as_bytes().to_vec(),
    }
}
