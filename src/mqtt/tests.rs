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
