use super::*;

#[test]
fn three_sessions_closed_right_after_opening_suggest_a_client_id_takeover() {
    let mut w = SessionWatch::default();
    let s = |n: u64| Millis(n * 1000);
    // Long sessions, and a close without an open, say nothing.
    w.opened(s(0));
    assert!(!w.closed(s(100)));
    assert!(!w.closed(s(101)));
    // Three short ones within a minute do, once; the count starts again after.
    for (open, close, want) in [(200, 201, false), (202, 203, false), (204, 205, true)] {
        w.opened(s(open));
        assert_eq!(w.closed(s(close)), want, "{open}");
    }
    w.opened(s(206));
    assert!(!w.closed(s(207)));
    // Spread over more than a minute, they do not.
    let mut w = SessionWatch::default();
    for (open, close) in [(0, 1), (40, 41), (110, 111)] {
        w.opened(s(open));
        assert!(!w.closed(s(close)));
    }
}

fn msg(topic: &str, qos: QoS) -> Incoming {
    let mut p = Publish::new(topic, qos, "x");
    p.pkid = 1;
    Incoming::Message(p)
}

fn topics(run: &[Incoming]) -> Vec<String> {
    run.iter()
        .map(|i| match i {
            Incoming::Message(p) => p.topic.clone(),
            _ => "-".into(),
        })
        .collect()
}

#[test]
fn a_batch_is_cut_where_a_topic_comes_again_and_keeps_its_order() {
    let batch = vec![
        msg("a", QoS::AtLeastOnce),
        msg("b", QoS::AtLeastOnce),
        msg("b", QoS::AtMostOnce),
        Incoming::Subscribed,
        msg("a", QoS::AtLeastOnce),
        msg("c", QoS::AtLeastOnce),
        msg("a", QoS::AtLeastOnce),
    ];
    let runs: Vec<Vec<String>> = one_per_topic(batch).iter().map(|r| topics(r)).collect();
    assert_eq!(
        runs,
        vec![vec!["a", "b", "b", "-"], vec!["a", "c"], vec!["a"],]
    );
    assert!(one_per_topic(Vec::new()).is_empty());
}
