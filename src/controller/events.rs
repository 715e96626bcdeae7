//! The runs' Kubernetes Events (`events.k8s.io/v1`), a repeat within [`SERIES_WINDOW`] folded
//! into the first Event's series (its count) the way kube's `Recorder` does.
//!
//! Not kube's `Recorder` itself: its cache keeps every Event it published in the last 6
//! minutes as a whole `Event` object, in a map whose table never shrinks. After 1,000 runs
//! started, that was 6 MiB held for good (heaptrack of the controller). Here a series is what
//! a repeat needs (the Event's name, its count, when it was last seen) under a hash of what
//! makes two Events the same, and the map shrinks again once its series are over.

use super::context::Context;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{EventType, Reporter};
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after an Event a repeat of it still folds into its series (kube's Recorder: 6
/// minutes).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// The API server refuses an Event whose note is longer.
const MAX_NOTE_BYTES: usize = 1024;

/// One Event to publish about a run (what `follow_up` decides to tell).
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
    /// The object among the run's several that the Event concerns (e.g. a lost worker pod):
    /// Events about different objects are different series.
    pub related: Option<ObjectReference>,
    /// Whether a repeat within [`SERIES_WINDOW`] folds into the first Event's series (which
    /// keeps the first note): for news that is the same each time it repeats (a phase, a
    /// reconcile error); not for news whose note differs each time under the same reason and
    /// objects (e.g. which generation completed).
    pub fold: bool,
}

/// Publishes Events for the controller; one for all reconciles, so that repeats fold.
pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
    series: Mutex<SeriesCache>,
}

impl EventPublisher {
    pub fn new(client: Client, reporter: Reporter) -> EventPublisher {
        EventPublisher {
            client,
            reporter,
            series: Mutex::default(),
        }
    }

    /// Publishes `event` on `run`, as a repeat of the same Event within [`SERIES_WINDOW`] when
    /// there is one (its note stays the first one's), unless `fold` is false.
    async fn publish(
        &self,
        run: &impl Resource<DynamicType = ()>,
        event: Notice,
    ) -> Result<(), kube::Error> {
        let regarding = run.object_ref(&());
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = event.fold.then(|| series_key(&event, &regarding));
        let repeat = key.and_then(|key| self.series.lock().unwrap().repeat(key, Instant::now()));
        let now = MicroTime(Timestamp::now());
        let patched = match &repeat {
            Some(Repeat { name, count }) => {
                let series = serde_json::json!({"series": EventSeries {
                    count: *count,
                    last_observed_time: now.clone(),
                }});
                match api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&series))
                    .await
                {
                    Ok(_) => Some((name.clone(), *count)),
                    // deleted meanwhile (by its TTL or someone): the repeat starts a new series
                    Err(kube::Error::Api(status)) if status.code == 404 => None,
                    Err(err) => return Err(err),
                }
            }
            None => None,
        };
        let (name, count) = match patched {
            Some(patched) => patched,
            None => {
                let name = format!("{}.{:x}", run.name_any(), now.0.as_nanosecond());
                api.create(
                    &PostParams::default(),
                    &self.new_event(&name, event, regarding, now),
                )
                .await?;
                (name, 1)
            }
        };
        if let Some(key) = key {
            self.series
                .lock()
                .unwrap()
                .seen(key, name, count, Instant::now());
        }
        Ok(())
    }

    fn new_event(
        &self,
        name: &str,
        event: Notice,
        regarding: ObjectReference,
        now: MicroTime,
    ) -> Event {
        let controller = self.reporter.controller.clone();
        Event {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some("Reconcile".into()),
            reason: Some(event.reason),
            note: Some(within_note_limit(event.note)),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            event_time: Some(now),
            regarding: Some(regarding),
            related: event.related,
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            reporting_controller: Some(controller),
            ..Event::default()
        }
    }
}

impl Context {
    /// Publishes an Event on the run; failures to publish are logged, never fatal.
    pub async fn publish(&self, run: &impl Resource<DynamicType = ()>, notice: Notice) {
        if let Err(err) = self.events.publish(run, notice).await {
            tracing::warn!(run = %run.name_any(), error = %err, "publishing an event failed");
        }
    }
}

/// What makes two Events the same series: type, reason and the objects (not the note).
fn series_key(event: &Notice, regarding: &ObjectReference) -> u64 {
    let mut hasher = DefaultHasher::new();
    event.type_.hash(&mut hasher);
    event.reason.hash(&mut hasher);
    for reference in [Some(regarding), event.related.as_ref()] {
        reference
            .map(|r| (&r.kind, &r.namespace, &r.name, &r.uid))
            .hash(&mut hasher);
    }
    hasher.finish()
}

/// `note`, cut at a character boundary to what the API server accepts.
fn within_note_limit(mut note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push('…');
    note
}

/// The series of the last [`SERIES_WINDOW`], by [`series_key`].
#[derive(Default)]
struct SeriesCache {
    series: HashMap<u64, Series>,
}

struct Series {
    /// The first Event's name, which repeats patch.
    name: String,
    count: i32,
    last: Instant,
}

/// A repeat: patch Event `name` to `count`.
#[derive(Debug, PartialEq)]
struct Repeat {
    name: String,
    count: i32,
}

impl SeriesCache {
    /// The repeat an Event with `key` is at `now`, if its series is still open.
    fn repeat(&mut self, key: u64, now: Instant) -> Option<Repeat> {
        self.forget_before(now);
        self.series.get(&key).map(|s| Repeat {
            name: s.name.clone(),
            count: s.count + 1,
        })
    }

    /// The Event with `key` was published (as Event `name`, the `count`th of its series).
    fn seen(&mut self, key: u64, name: String, count: i32, now: Instant) {
        self.series.insert(
            key,
            Series {
                name,
                count,
                last: now,
            },
        );
    }

    fn forget_before(&mut self, now: Instant) {
        self.series
            .retain(|_, s| now.saturating_duration_since(s.last) < SERIES_WINDOW);
        // A burst (a thousand runs starting) leaves a large table behind once its series end.
        if self.series.capacity() > 64 && self.series.len() < self.series.capacity() / 4 {
            self.series.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        }
    }

    fn key(reason: &str, related: Option<ObjectReference>) -> u64 {
        let run = ObjectReference {
            kind: Some("AbcRun".into()),
            namespace: Some("ns".into()),
            name: Some("sim".into()),
            ..ObjectReference::default()
        };
        let event = Notice {
            type_: EventType::Warning,
            reason: reason.into(),
            note: "the note is not part of the series".into(),
            related,
            fold: true,
        };
        series_key(&event, &run)
    }

    #[test]
    fn a_repeat_within_the_window_counts_on_the_first_event_and_others_start_their_own() {
        let mut cache = SeriesCache::default();
        let t0 = Instant::now();
        let lost_w1 = key("RepairedLostWorker", Some(pod("w1")));
        assert_eq!(cache.repeat(lost_w1, t0), None);
        cache.seen(lost_w1, "sim.1".into(), 1, t0);
        let again = cache.repeat(lost_w1, t0 + Duration::from_secs(60));
        assert_eq!(
            again,
            Some(Repeat {
                name: "sim.1".into(),
                count: 2
            })
        );
        cache.seen(lost_w1, "sim.1".into(), 2, t0 + Duration::from_secs(60));
        // another pod, another reason: their own series
        assert_eq!(
            cache.repeat(key("RepairedLostWorker", Some(pod("w2"))), t0),
            None
        );
        assert_eq!(cache.repeat(key("RedisRestarted", None), t0), None);
        // the window runs from the last repeat
        let late = t0 + Duration::from_secs(60) + SERIES_WINDOW;
        assert_eq!(cache.repeat(lost_w1, late), None);
    }

    #[test]
    fn the_cache_gives_its_memory_back_when_a_burst_is_over() {
        let mut cache = SeriesCache::default();
        let t0 = Instant::now();
        for i in 0..4_000 {
            cache.seen(i, format!("run-{i}.1"), 1, t0);
        }
        let burst = cache.series.capacity();
        cache.seen(99_999, "live.1".into(), 1, t0 + SERIES_WINDOW);
        assert_eq!(cache.repeat(0, t0 + SERIES_WINDOW), None);
        assert_eq!(cache.series.len(), 1);
        assert!(
            cache.series.capacity() < burst / 16,
            "{}",
            cache.series.capacity()
        );
    }

    #[test]
    fn long_notes_are_cut_to_what_the_api_server_accepts() {
        // Many repaired processes of one pod, with a multi-byte character at the cut.
        let note = format!("{}é{}", "a".repeat(MAX_NOTE_BYTES - 2), "b".repeat(500));
        let cut = within_note_limit(note);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        let short = "worker pod w1 was lost".to_string();
        assert_eq!(within_note_limit(short.clone()), short);
    }
}
