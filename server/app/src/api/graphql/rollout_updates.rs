//! `rolloutUpdates`: a rollout's state now, then after every stored change. Changes this
//! process stored wake the stream at once (`Rollouts::subscribe`, subscribed before the first
//! read, so none is missed); another replica's are seen by reading the record again every
//! second. A state is sent when its `revision` is new; the stream ends after a final one.

use super::types::View;
use crate::services::App;
use futures_util::Stream;
use std::sync::Arc;
use upkeep_core::rollout::Rollout;

pub fn stream(app: Arc<App>, first: Rollout) -> impl Stream<Item = View<Rollout>> {
    let rx = app.rollouts.subscribe();
    let id = first.id;
    let state = (app, rx, Some(first), None::<u64>, false);
    futures_util::stream::unfold(
        state,
        move |(app, mut rx, mut pending, mut sent, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(r) = pending.take()
                    && sent != Some(r.revision)
                {
                    sent = Some(r.revision);
                    let done = r.status.is_final();
                    return Some((View(r), (app, rx, None, sent, done)));
                }
                tokio::select! {
                    got = rx.recv() => match got {
                        Ok(changed) if changed != id => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        _ => {}
                    },
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = app.shutdown.cancelled() => return None,
                }
                pending = app.store.get::<Rollout>(&id).await.ok().flatten();
            }
        },
    )
}
