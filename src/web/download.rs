//! Checkpoint downloads: streamed, with `Content-Length`, a strong `ETag`
//! (the file's SHA-256) and single `Range` requests answered with 206.

use super::api::load_run;
use super::error::{ApiError, AppError};
use super::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// Parses one `bytes=` range against a file of `size` bytes into an inclusive
/// `(start, end)`. `Ok(None)` means "serve the whole file" (no header, or a
/// form we do not support such as several ranges, which RFC 9110 allows us to
/// ignore); `Err` means the range cannot be satisfied (416).
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // Suffix form: the last N bytes.
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| ())?
                .min(size.saturating_sub(1))
        };
        if start >= size || end < start {
            return Err(());
        }
        (start, end)
    };
    Ok(Some(range))
}

pub async fn checkpoint(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let run = load_run(&state, &id).await?;
    // Only names recorded in the database are served, and their stored paths
    // must stay inside the data dir, so `../` in a name cannot escape.
    let ckpt = state
        .store
        .get_checkpoint(run.id, &name)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("checkpoint {name:?} of run {}", run.id)))?;
    let data_dir = tokio::fs::canonicalize(&state.data_dir).await?;
    let path = tokio::fs::canonicalize(data_dir.join(&ckpt.path))
        .await
        .map_err(|_| AppError::NotFound(format!("file of checkpoint {name:?}")))?;
    if !path.starts_with(&data_dir) {
        return Err(AppError::NotFound(format!("checkpoint {name:?}")).into());
    }
    let mut file = tokio::fs::File::open(&path).await?;
    let size = file.metadata().await?.len();
    let etag = format!("\"{}\"", ckpt.sha256);
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    // A Range whose If-Range does not match the current ETag gets the whole file.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok);
    let range =
        parse_range(range_header, size).map_err(|_| AppError::RangeNotSatisfiable { size })?;

    let (status, start, len) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let body = Body::from_stream(ReaderStream::new(file.take(len)));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"run{}-{}\"",
        run.id, ckpt.name
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{}", start, start + len - 1, size))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=x-3"), 100), Err(()));
        assert_eq!(parse_range(Some("items=0-3"), 100), Ok(None));
    }
}
