//! `GET /api/stream`: the live updates as server-sent events, one `event:` name per kind of
//! [`Update`](super::Update). A listener that falls more than [`UPDATES`](super::UPDATES)
//! behind gets `event: lagged` (reload what you show) rather than holding memory for it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::App;

pub fn stream(app: &Arc<App>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.updates.subscribe();
    let cancel = app.cancel.clone();
    let s = futures::stream::unfold((rx, cancel), |(mut rx, cancel)| async move {
        let next = tokio::select! {
            _ = cancel.cancelled() => return None,
            r = rx.recv() => r,
        };
        let ev = match next {
            Ok(u) => Event::default().event(u.name()).data(u.data().to_string()),
            Err(RecvError::Lagged(n)) => Event::default()
                .event("lagged")
                .data(format!("{{\"missed\":{n}}}")),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(ev), (rx, cancel)))
    });
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
