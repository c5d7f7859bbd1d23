//! Sync windows as a fetch sees them: the second of the day, and waiting for the next window.

use std::time::Duration;

use zdn_protocol::sync::SyncWindows;

/// The current second of the day, UTC.
pub(crate) fn second_of_day() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() % 86_400) as u32)
}

/// Sleeps until a sync window is open, reporting the wait now and then.
pub(crate) async fn wait_for_window(w: &SyncWindows, report: &mut (dyn FnMut(u32) + Send)) {
    loop {
        let wait = w.wait(second_of_day());
        if wait == 0 {
            return;
        }
        report(wait);
        tokio::time::sleep(Duration::from_secs(u64::from(wait.min(30)))).await;
    }
}
