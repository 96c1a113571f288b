//! The store's own tests: the outbox, records that do not decode, one writer under races.

use super::*;
use crate::config::DeviceType;
use crate::event::DeviceRef;
use crate::wire::{Data, EventKind};
use std::path::PathBuf;

fn origin() -> Origin {
    Origin {
        controller_id: "edge-1".into(),
        organization_id: "org".into(),
        meeting_space_id: "ms".into(),
    }
}

fn presence(device: &str) -> NewEvent {
    NewEvent::new(
        Data::DeviceOnline(crate::wire::DeviceOnline {
            reason: crate::wire::PresenceReason::Availability,
            offline_since: None,
        }),
        Some(DeviceRef {
            id: device.into(),
            kind: DeviceType::Lock,
            meeting_space_id: None,
        }),
        Millis::now(),
    )
}

fn action(device: &str) -> NewEvent {
    let now = Millis::now();
    NewEvent::new(
        Data::ActionCompleted(crate::wire::ActionCompleted {
            action_id: "a".into(),
            action: crate::wire::DoorAction::Unlock,
            status: crate::wire::ActionStatus::Succeeded,
            source: crate::wire::ActionSource::Zencore,
            requested_at: now,
            completed_at: now,
            duration_ms: 0,
            booking_id: None,
            grant_id: None,
            error: None,
        }),
        Some(DeviceRef {
            id: device.into(),
            kind: DeviceType::Lock,
            meeting_space_id: None,
        }),
        now,
    )
}

async fn gc(store: &Store, now: Millis) -> usize {
    let mut c = Commit::new();
    Store::gc_delivered(&mut c, now);
    store.commit(c).await.unwrap().removed
}

fn seq_of(e: &Enqueued) -> u64 {
    match e {
        Enqueued::Stored { seq, .. } | Enqueued::Dropped { seq } => *seq,
    }
}

#[tokio::test]
async fn sequences_rise_across_reopen_and_pending_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut seqs = Vec::new();
    {
        let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
        for _ in 0..5 {
            seqs.push(seq_of(&store.enqueue(presence("d1")).await.unwrap()));
        }
        assert_eq!(*store.durable().borrow(), 5);
    }
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    assert_eq!(store.load_pending().unwrap().len(), 5);
    seqs.push(seq_of(&store.enqueue(presence("d1")).await.unwrap()));
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn concurrent_enqueues_share_flushes_and_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.enqueue(presence(&format!("d{}", i % 7))).await.unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(seq_of(&t.await.unwrap()));
    }
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert_eq!(*store.durable().borrow(), 200);
    let pending = store.scan_pending(0, 200).unwrap();
    assert_eq!(pending.len(), 200);
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn attempts_dead_letters_and_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let Enqueued::Stored { seq, id } = store.enqueue(action("d")).await.unwrap() else {
        panic!()
    };
    let attempt = Attempt {
        attempt: 1,
        started_at: Millis::now().rfc3339(),
        duration_ms: 3,
        status: Some(410),
        error: Some("HTTP 410".into()),
    };
    let mut status = Status::untried();
    status.attempts = 1;
    status.state = State::Dead;
    status.dead_reason = Some("gone".into());
    store.record_attempt(seq, attempt.clone(), status);
    store.flush().unwrap();
    assert_eq!(store.list(State::Dead, 10).unwrap().len(), 1);
    assert!(store.load_pending().unwrap().is_empty());
    let detail = store.find(&id).unwrap().unwrap();
    assert_eq!(detail.attempts_log, vec![attempt]);
    assert_eq!(detail.summary.sequence, seq);
    let back = store.requeue(seq).unwrap().unwrap();
    assert_eq!(back.attempts, 1);
    assert_eq!(store.load_pending().unwrap().len(), 1);
    assert!(store.requeue(seq).unwrap().is_none(), "not dead any more");
    assert!(store.find("evt_nope").unwrap().is_none());
}

#[tokio::test]
async fn over_budget_drops_oldest_presence_first_and_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let mut all = Vec::new();
    for i in 0..40 {
        let e = if i % 4 == 0 {
            action("d")
        } else {
            presence("d")
        };
        all.push(seq_of(&store.enqueue(e).await.unwrap()));
    }
    let live = store.stats().unwrap().live_bytes;
    // Shrink the budget to about half: presence events must go, actions must stay.
    store.set_max_bytes(live / 2);
    store.enqueue(action("d")).await.unwrap();
    store.enqueue(presence("d")).await.unwrap();
    let pending = store.load_pending().unwrap();
    let kinds: Vec<_> = pending.iter().map(|p| p.kind.unwrap()).collect();
    let actions = kinds
        .iter()
        .filter(|k| **k == EventKind::DeviceActionCompleted)
        .count();
    assert_eq!(actions, 11, "every action kept");
    let gap = pending
        .iter()
        .find(|p| p.kind == Some(EventKind::EdgeDataGap))
        .expect("a data gap event");
    let body: serde_json::Value =
        serde_json::from_slice(&store.body(gap.seq).unwrap().unwrap()).unwrap();
    assert_eq!(body["data"]["reason"], "store_full");
    assert_eq!(
        body["data"]["from_sequence"], 2,
        "the oldest presence event went first"
    );
    let count = body["data"]["count"].as_u64().unwrap();
    let survivors: Vec<_> = pending.iter().map(|p| p.seq).collect();
    let missing = all.iter().filter(|s| !survivors.contains(s)).count() as u64;
    assert_eq!(count, missing);
    assert!(store.stats().unwrap().live_bytes <= live / 2 + 400);
}

#[tokio::test]
async fn corrupt_store_is_quarantined_and_numbering_continues_above_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
        store.enqueue(presence("d")).await.unwrap();
    }
    // Overwrite every file of the store with garbage.
    for entry in walk(&dir.path().join(STORE_DIR)) {
        std::fs::write(&entry, vec![0xA5u8; 4096]).unwrap();
    }
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let aside = store.quarantined().expect("quarantined").to_owned();
    assert!(aside.exists());
    let seq = seq_of(&store.enqueue(presence("d")).await.unwrap());
    assert!(seq > 1, "sequence {seq} reused after quarantine");
}

#[tokio::test]
async fn delivered_events_keep_their_log_for_24h_then_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let Enqueued::Stored { seq, id } = store.enqueue(action("d")).await.unwrap() else {
        panic!()
    };
    let delivered_at = Millis::now();
    let status = Status {
        state: State::Delivered,
        attempts: 1,
        delivered_ms: Some(delivered_at.0),
        ..Status::untried()
    };
    let attempt = Attempt {
        attempt: 1,
        started_at: delivered_at.rfc3339(),
        duration_ms: 1,
        status: Some(200),
        error: None,
    };
    store.record_attempt(seq, attempt, status);
    store.flush().unwrap();
    let almost = delivered_at.saturating_add(DELIVERED_RETENTION - Duration::from_secs(1));
    assert_eq!(gc(&store, almost).await, 0);
    assert_eq!(store.find(&id).unwrap().unwrap().attempts_log.len(), 1);
    let after = delivered_at.saturating_add(DELIVERED_RETENTION + Duration::from_secs(1));
    assert_eq!(gc(&store, after).await, 1);
    assert!(store.find(&id).unwrap().is_none());
    assert_eq!(
        store.stats().unwrap().live_bytes,
        0,
        "budget accounting returns to zero"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Thing {
    name: String,
}

impl Record for Thing {
    const FAMILY: &'static str = "test.thing";
    const VERSION: u32 = 2;
}

/// The same family at an older schema: what a store written by another build holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OldThing {
    title: String,
}

impl Record for OldThing {
    const FAMILY: &'static str = "test.thing";
    const VERSION: u32 = 1;
}

#[tokio::test]
async fn an_undecodable_record_is_counted_shown_and_kept_never_skipped_silently_or_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let mut c = Commit::new();
    c.put(
        "a",
        &OldThing {
            title: "old".into(),
        },
    )
    .unwrap();
    c.put("b", &Thing { name: "new".into() }).unwrap();
    store.commit(c).await.unwrap();
    let all = store.records::<Thing>().unwrap();
    assert_eq!(all, vec![("b".to_owned(), Thing { name: "new".into() })]);
    let stats = store.stats().unwrap();
    assert_eq!(stats.undecodable_records, 1);
    assert_eq!(stats.undecodable[0].family, "test.thing");
    assert_eq!(stats.undecodable[0].key, "a");
    assert!(stats.undecodable[0].error.contains("schema version 1"));
    // Still there, byte for byte, after a reopen.
    drop(store);
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    assert_eq!(
        store.records::<OldThing>().unwrap()[0].1,
        OldThing {
            title: "old".into()
        }
    );
    // A write over it keeps the old bytes aside first.
    let mut c = Commit::new();
    c.put(
        "a",
        &Thing {
            name: "fresh".into(),
        },
    )
    .unwrap();
    store.commit(c).await.unwrap();
    assert_eq!(store.records::<Thing>().unwrap().len(), 2);
    let stats = store.stats().unwrap();
    assert_eq!(stats.kept_records, 1);
    assert!(
        !stats.undecodable.iter().any(|u| u.key == "a"),
        "the live record decodes now: {:?}",
        stats.undecodable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_racing_commits_with_one_new_key_exactly_one_lands() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Commit::new();
            c.insert_new(
                "cmd-1",
                &Thing {
                    name: format!("copy {i}"),
                },
            )
            .unwrap();
            c.event(action("d"));
            s.commit(c).await
        }));
    }
    let mut landed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => {
                landed += 1;
                assert_eq!(c.events.len(), 1);
            }
            Err(StoreError::Exists { family, key }) => {
                assert_eq!((family, key.as_str()), ("test.thing", "cmd-1"))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(landed, 1);
    assert_eq!(
        store.load_pending().unwrap().len(),
        1,
        "a refused commit wrote nothing"
    );
}

#[tokio::test]
async fn a_failing_step_fails_its_own_commit_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let mut good = Vec::new();
    let mut bad = Commit::new();
    bad.event(action("d")).step(|_| {
        Err(StoreError::Record {
            what: "test".into(),
            error: record::DecodeError::Json("refused".into()),
        })
    });
    let failing = store.commit(bad);
    for _ in 0..5 {
        let mut c = Commit::new();
        c.event(presence("d"));
        good.push(store.commit(c));
    }
    assert!(failing.await.is_err());
    for g in good {
        g.await.unwrap();
    }
    let pending = store.load_pending().unwrap();
    assert_eq!(pending.len(), 5);
    assert!(pending
        .iter()
        .all(|p| p.kind == Some(EventKind::DeviceOnline)));
}

#[tokio::test]
async fn counters_kept_on_write_match_a_recount_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
        let mut seqs = Vec::new();
        for i in 0..12 {
            let e = if i % 3 == 0 {
                action("d")
            } else {
                presence("d")
            };
            seqs.push(seq_of(&store.enqueue(e).await.unwrap()));
        }
        let delivered = Status {
            state: State::Delivered,
            attempts: 1,
            delivered_ms: Some(Millis::now().0),
            ..Status::untried()
        };
        let attempt = |n| Attempt {
            attempt: n,
            started_at: Millis::now().rfc3339(),
            duration_ms: 1,
            status: Some(200),
            error: None,
        };
        store.record_attempt(seqs[0], attempt(1), delivered.clone());
        store.record_attempt(seqs[1], attempt(1), delivered);
        store.set_dead(seqs[2], "max_age");
        store.flush().unwrap();
        let stats = store.stats().unwrap();
        assert_eq!(
            (stats.pending, stats.dead, stats.delivered_retained),
            (9, 1, 2)
        );
        assert_eq!(stats.pending_by_kind["device.online"], 6);
        assert_eq!(stats.pending_by_kind["device.action_completed"], 3);
        let recounted = writer::recount(&store.begin_read().unwrap()).unwrap();
        let kept = store.meta();
        assert_eq!(
            (
                recounted.pending,
                recounted.dead,
                recounted.delivered_retained,
                recounted.live_bytes
            ),
            (
                kept.pending,
                kept.dead,
                kept.delivered_retained,
                kept.live_bytes
            )
        );
        assert_eq!(recounted.pending_by_kind, kept.pending_by_kind);
    }
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(
        (stats.pending, stats.dead, stats.delivered_retained),
        (9, 1, 2)
    );
    assert_eq!(stats.counters.delivered, 2);
    assert_eq!(store.list(State::Dead, 10).unwrap().len(), 1);
}

#[test]
fn a_sled_store_left_behind_is_moved_aside_once() {
    let dir = tempfile::tempdir().unwrap();
    let sled = dir.path().join(STORE_DIR);
    std::fs::create_dir_all(sled.join("blobs")).unwrap();
    std::fs::write(sled.join("conf"), b"segment_size: 16384\n").unwrap();
    std::fs::write(sled.join("db"), vec![0u8; 512]).unwrap();
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    assert!(store.quarantined().is_none());
    assert!(dir.path().join("store.sled-old").join("conf").is_file());
    drop(store);
    let _again = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    assert!(!dir.path().join("store.sled-old-2").exists());
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Neighbour(u32);

impl Record for Neighbour {
    /// Sorts right after `test.thing`: a family's range must not run into it.
    const FAMILY: &'static str = "test.thing0";
    const VERSION: u32 = 1;
}

#[tokio::test]
async fn a_family_is_read_within_its_own_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
    let mut c = Commit::new();
    c.put("b", &Thing { name: "b".into() }).unwrap();
    c.put("a", &Thing { name: "a".into() }).unwrap();
    c.put("0", &Neighbour(1)).unwrap();
    c.put("zz", &Neighbour(2)).unwrap();
    store.commit(c).await.unwrap();
    let last = Arc::new(Mutex::new(None));
    let out = last.clone();
    let mut c = Commit::new();
    c.step(move |tx| {
        let l = tx.last::<Thing>()?.map(|(k, v)| (k, v.map(|t| t.name)));
        *out.lock().unwrap() = l;
        Ok(())
    });
    store.commit(c).await.unwrap();
    assert_eq!(
        *last.lock().unwrap(),
        Some(("b".to_owned(), Ok("b".to_owned())))
    );
    assert_eq!(store.records::<Thing>().unwrap().len(), 2);
    assert_eq!(store.records::<Neighbour>().unwrap().len(), 2);
    assert_eq!(
        store.undecodable(),
        Vec::new(),
        "no family read another's records"
    );
}

#[tokio::test]
async fn the_state_dir_is_0700_and_the_store_files_0600_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // What a hand-run daemon with umask 022 would leave.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(&state, origin(), 1 << 30).unwrap();
    store.enqueue(presence("d")).await.unwrap();
    drop(store);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(STORE_DIR)), 0o700);
    assert_eq!(mode(&state.join(STORE_DIR).join(STORE_FILE)), 0o600);
    assert_eq!(mode(&state.join(FLOOR_FILE)), 0o600);
}
