//! What the query verbs print: the status report and the clock line (outside text escaped).

pub(super) fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("zenedge: cannot print answer: {e}"),
    }
}

/// One line on the clock, for `zenedge status`, `zenedge clock` and `doctor`.
pub fn clock_line(c: &crate::access::ClockStatus) -> String {
    let sync = if c.synchronised {
        "synchronised"
    } else if c.require_sync {
        "NOT synchronised"
    } else {
        "not synchronised (clock.require_sync = false)"
    };
    let behind = if c.behind_floor_ms > 0 {
        format!(
            "; {} BELOW the floor {} (commands that grant access get 503 clock; \
             `zenedge clock --reset-floor` if the floor is wrong)",
            humantime::format_duration(std::time::Duration::from_secs(c.behind_floor_ms / 1000)),
            c.floor
        )
    } else {
        String::new()
    };
    format!(
        "{} at {}, {sync}{behind}",
        if c.trusted { "trusted" } else { "UNTRUSTED" },
        c.system
    )
}

pub(super) fn print_status(r: &crate::admin::StatusReport) {
    let s = &r.store;
    println!(
        "zenedge {} on {} (up since {})",
        r.version, r.controller_id, r.started_at
    );
    println!("clock        {}", clock_line(&r.clock));
    let m = &r.mqtt;
    let since = m.since.as_deref().unwrap_or("-");
    println!(
        "mqtt         {}",
        match (m.up(), m.needed) {
            (true, _) => format!("connected and subscribed since {since}"),
            (false, true) => format!(
                "DOWN since {since} (devices unknown, /healthz 503){}",
                m.last_error
                    .as_deref()
                    .map(|e| format!(": {}", crate::logging::escaped(e)))
                    .unwrap_or_default()
            ),
            (false, false) => format!("not connected since {since} (no device needs it)"),
        }
    );
    for w in &r.warnings {
        println!("WARNING      {}", crate::logging::escaped(w));
    }
    for l in &r.lockdowns {
        let scope = match &l.meeting_space_id {
            Some(room) => format!("room {}", crate::logging::escaped(room)),
            None => "the whole controller".to_owned(),
        };
        let reason = l
            .reason
            .as_deref()
            .map(|r| format!(" ({})", crate::logging::escaped(r)))
            .unwrap_or_default();
        println!(
            "LOCKDOWN     {} of {scope} since {}{reason}: every door locked, local credentials \
             denied",
            crate::logging::escaped(&l.lockdown_id),
            l.since.rfc3339(),
        );
    }
    if let Some(c) = &r.channel {
        let since = c.since.as_deref().unwrap_or("-");
        let error = c
            .last_error
            .as_deref()
            .map(|e| format!(": {}", crate::logging::escaped(e)))
            .unwrap_or_default();
        println!(
            "channel      {} (ZenCore's broker {}, {} commands)",
            if c.up() {
                format!("connected since {since}")
            } else {
                format!("DOWN since {since}{error}")
            },
            c.url,
            c.commands
        );
    }
    println!(
        "zencore      {}{}",
        if r.delivery.zencore_reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        },
        r.delivery
            .next_probe_at
            .as_ref()
            .map(|t| format!(", next probe {t}"))
            .unwrap_or_default()
    );
    println!(
        "queue        {} pending ({} in flight), {} dead, oldest pending {}",
        s.pending,
        r.delivery.in_flight,
        s.dead,
        s.oldest_pending_at.as_deref().unwrap_or("-")
    );
    println!(
        "delivered    {} total, {} kept for their attempt log; {} dropped for space",
        s.counters.delivered, s.delivered_retained, s.counters.dropped
    );
    println!(
        "store        {} of {} bytes used{}, {} on disk, last sequence {}",
        s.live_bytes,
        s.max_store_bytes,
        if s.full { " (FULL)" } else { "" },
        s.disk_bytes,
        s.last_sequence
    );
    if let Some(q) = &s.quarantined {
        println!("WARNING      a corrupt store was moved aside to {q}");
    }
    if s.undecodable_records > 0 {
        println!(
            "WARNING      {} stored record(s) cannot be decoded by this build (kept, not used):",
            s.undecodable_records
        );
        for u in &s.undecodable {
            println!("               {} {}: {}", u.family, u.key, u.error);
        }
    }
    if s.kept_records > 0 {
        println!(
            "NOTE         {} undecodable record(s) were kept aside before being replaced",
            s.kept_records
        );
    }
    for (device, p) in &r.serial {
        println!(
            "serial       {device}: port {}, opened {}×, lost {}×, {} frame errors, {} noise bytes{}{}",
            if p.open { "open" } else { "CLOSED" },
            p.opens,
            p.losses,
            p.crc_errors,
            p.noise_bytes,
            if p.sc_failures > 0 {
                format!(", {} Secure Channel failures", p.sc_failures)
            } else {
                String::new()
            },
            p.last_error
                .as_ref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
}
