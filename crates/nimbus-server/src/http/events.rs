//! `/v1/events`: the event log, with `after` for paging and `wait_secs` for following.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use nimbus_api::{ErrorBody, EventList};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{blocking, ApiQuery, AppState};
use crate::error::{Result, ServerError};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a sequence number above this.
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// When nothing is newer than `after`, wait up to this many seconds (at most 60).
    pub wait_secs: Option<u64>,
}

/// Read the event log, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody)))]
pub async fn list_events(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventList>> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ServerError::InvalidRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let after = q.after.unwrap_or(0);
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(q.wait_secs.unwrap_or(0).min(60));
    let mut rx = app.cluster.store.subscribe();
    loop {
        let c = app.cluster.clone();
        let items = blocking(move || c.events_after(after, limit)).await?;
        if !items.is_empty() || tokio::time::Instant::now() >= deadline {
            let last = items.last().map(|e| e.seq).unwrap_or(after);
            return Ok(Json(EventList { items, last }));
        }
        let seen = *rx.borrow_and_update();
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(|r| *r > seen)).await;
    }
}
