//! Server push: events fanned out to a service's WebSocket watchers, by topic.
//!
//! A topic exists while someone watches it: it is created by its first watcher and freed with
//! its last, so watchers opening and closing on ever new topics cost nothing once they left.
//! Topics and watchers are capped: beyond either cap a new watcher is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Topics watched at once, by default.
pub const MAX_TOPICS: usize = 1_000;
/// Watchers in all, by default.
pub const MAX_WATCHERS: usize = 10_000;
/// Events a watcher may fall behind before it loses the oldest.
const BACKLOG: usize = 1024;

/// Why a watcher was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// As many topics are watched as allowed.
    #[error("too many topics watched (at most {0})")]
    TooManyTopics(usize),
    /// As many watchers are open as allowed.
    #[error("too many watchers (at most {0})")]
    TooManyWatchers(usize),
}

type Topics = Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>;

/// Fan-out of events to WebSocket watchers (server push).
pub struct PushHub {
    topics: Arc<Topics>,
    watchers: Arc<AtomicUsize>,
    max_topics: usize,
    max_watchers: usize,
}

impl Default for PushHub {
    fn default() -> Self {
        Self::with_limits(MAX_TOPICS, MAX_WATCHERS)
    }
}

impl PushHub {
    /// A hub of at most `topics` topics and `watchers` watchers.
    pub fn with_limits(topics: usize, watchers: usize) -> Self {
        Self {
            topics: Arc::default(),
            watchers: Arc::default(),
            max_topics: topics,
            max_watchers: watchers,
        }
    }

    /// Watches `topic`; the watcher lags (loses the oldest) if it reads too slowly.
    pub fn subscribe(&self, topic: &str) -> Result<Watch, WatchError> {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if self.watchers.load(Ordering::Acquire) >= self.max_watchers {
            return Err(WatchError::TooManyWatchers(self.max_watchers));
        }
        let rx = match topics.get(topic) {
            Some(tx) => tx.subscribe(),
            None if topics.len() >= self.max_topics => {
                return Err(WatchError::TooManyTopics(self.max_topics))
            }
            None => {
                let (tx, rx) = broadcast::channel(BACKLOG);
                topics.insert(topic.to_string(), tx);
                rx
            }
        };
        self.watchers.fetch_add(1, Ordering::AcqRel);
        Ok(Watch {
            rx: Some(rx),
            topic: topic.to_string(),
            topics: self.topics.clone(),
            watchers: self.watchers.clone(),
        })
    }

    /// Sends `text` to every watcher of `topic`; returns how many there were.
    pub fn push(&self, topic: &str, text: impl Into<Arc<str>>) -> usize {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        match topics.get(topic) {
            Some(tx) => tx.send(text.into()).unwrap_or(0),
            None => 0,
        }
    }

    /// Whether anyone watches `topic`.
    pub fn has_subscribers(&self, topic: &str) -> bool {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.get(topic).is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Topics watched now.
    pub fn topic_count(&self) -> usize {
        self.topics.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Watchers open now.
    pub fn watcher_count(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }
}

/// One watcher of a topic; leaving (dropping it) frees the topic if it was the last.
pub struct Watch {
    // `None` only while dropping.
    rx: Option<broadcast::Receiver<Arc<str>>>,
    topic: String,
    topics: Arc<Topics>,
    watchers: Arc<AtomicUsize>,
}

impl Watch {
    /// The next event pushed on the topic.
    pub async fn recv(&mut self) -> Result<Arc<str>, broadcast::error::RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The receiver goes first, under the lock, so that a watcher arriving meanwhile
        // either finds the topic with its own receiver counted or creates it anew.
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.rx.take());
        if topics
            .get(&self.topic)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            topics.remove(&self.topic);
        }
        self.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_freed_with_its_last_watcher() {
        let hub = PushHub::default();
        let watchers: Vec<_> = (0..3_000)
            .map(|i| hub.subscribe(&format!("topic-{i}")).map(Some))
            .take_while(Result::is_ok)
            .collect();
        assert_eq!(hub.topic_count(), MAX_TOPICS, "capped");
        drop(watchers);
        assert_eq!(hub.topic_count(), 0);
        assert_eq!(hub.watcher_count(), 0);
        let a = hub.subscribe("t").expect("a");
        let b = hub.subscribe("t").expect("b");
        drop(a);
        assert!(hub.has_subscribers("t"), "b still watches");
        drop(b);
        assert_eq!(hub.topic_count(), 0);
    }

    #[test]
    fn watchers_and_topics_are_capped() {
        let hub = PushHub::with_limits(2, 3);
        let _a = hub.subscribe("a").expect("a");
        let _b = hub.subscribe("b").expect("b");
        assert_eq!(hub.subscribe("c").err(), Some(WatchError::TooManyTopics(2)));
        let _a2 = hub.subscribe("a").expect("a again");
        assert_eq!(
            hub.subscribe("b").err(),
            Some(WatchError::TooManyWatchers(3))
        );
    }
}
