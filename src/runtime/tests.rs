use super::*;

fn msg(topic: &str, qos: QoS) -> Input {
    let mut p = Publish::new(topic, qos, "x");
    p.pkid = 1;
    Input::Mqtt(LinkEvent::Message(p))
}

fn topics(run: &[Input]) -> Vec<String> {
    run.iter()
        .map(|i| match i {
            Input::Mqtt(LinkEvent::Message(p)) => p.topic.clone(),
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
        Input::Mqtt(LinkEvent::Subscribed),
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
