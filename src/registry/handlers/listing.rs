//! Tag lists and the catalog, paginated with `n` and `last` and a `Link` header.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Query, header_value, run};
use crate::registry::AppState;
use crate::registry::error::{RegistryError, Result};
use crate::registry::names::RepoName;

/// Applies `last` (exclusive start) and `n` (page size) to a sorted list. Returns
/// the page and whether more entries follow.
pub fn paginate(sorted: Vec<String>, query: &Query) -> Result<(Vec<String>, bool)> {
    let n = match query.get("n") {
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| RegistryError::SizeInvalid(format!("n={n:?} is not a page size")))?,
        ),
        None => None,
    };
    let mut items: Vec<String> = match query.get("last") {
        Some(last) => sorted.into_iter().filter(|t| t.as_str() > last).collect(),
        None => sorted,
    };
    let more = n.is_some_and(|n| items.len() > n);
    if let Some(n) = n {
        items.truncate(n);
    }
    Ok((items, more))
}

/// A JSON page, with a `Link` to the next one when more entries follow.
fn page(
    path: &str,
    body: serde_json::Value,
    more: bool,
    last: Option<&String>,
    query: &Query,
) -> Response {
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    if let (true, Some(last), Some(n)) = (more, last, query.get("n")) {
        let link = format!(
            "<{path}?n={n}&last={}>; rel=\"next\"",
            form_urlencoded::byte_serialize(last.as_bytes()).collect::<String>()
        );
        response
            .headers_mut()
            .insert(header::LINK, header_value(&link));
    }
    response
}

pub async fn tags(state: &Arc<AppState>, repo: &RepoName, query: &Query) -> Result<Response> {
    let (store, r) = (state.store.clone(), repo.clone());
    let tags = run(move || store.tags(&r))
        .await?
        .ok_or(RegistryError::NameUnknown)?;
    let (items, more) = paginate(tags, query)?;
    let last = items.last().cloned();
    let body = serde_json::json!({ "name": repo.as_str(), "tags": items });
    Ok(page(
        &format!("/v2/{repo}/tags/list"),
        body,
        more,
        last.as_ref(),
        query,
    ))
}

pub async fn catalog(state: &Arc<AppState>, query: &Query) -> Result<Response> {
    let store = state.store.clone();
    let repos = run(move || store.repositories()).await?;
    let (items, more) = paginate(repos, query)?;
    let last = items.last().cloned();
    let body = serde_json::json!({ "repositories": items });
    Ok(page("/v2/_catalog", body, more, last.as_ref(), query))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        Query::parse(Some(s))
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pagination() {
        let all = list(&["a", "b", "c", "d"]);
        assert_eq!(paginate(all.clone(), &q("")).unwrap(), (all.clone(), false));
        assert_eq!(
            paginate(all.clone(), &q("n=2")).unwrap(),
            (list(&["a", "b"]), true)
        );
        assert_eq!(
            paginate(all.clone(), &q("n=2&last=b")).unwrap(),
            (list(&["c", "d"]), false)
        );
        assert_eq!(
            paginate(all.clone(), &q("last=c")).unwrap(),
            (list(&["d"]), false)
        );
        assert_eq!(paginate(all.clone(), &q("n=0")).unwrap(), (vec![], true));
        assert!(paginate(all, &q("n=x")).is_err());
    }
}
