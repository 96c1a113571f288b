use super::super::sc;
use super::*;

#[test]
fn crc_matches_the_spec_vector() {
    // OSDP v2.2: POLL to address 0, sequence 0, CRC mode.
    let poll = encode(0, 0, code::POLL, &[], None, None);
    assert_eq!(poll, [0xFF, 0x53, 0x00, 0x08, 0x00, 0x04, 0x60, 0xEB, 0xAA]);
    assert_eq!(checksum(&[0x53, 0x00, 0x07, 0x00, 0x00, 0x60]), 0x46);
}

fn reply(address: u8, seq: u8, code: u8, data: &[u8]) -> Vec<u8> {
    let mut p = vec![SOM, address | 0x80, 0, 0, seq | CTRL_CRC, code];
    p.extend_from_slice(data);
    let total = p.len() + 2;
    p[2..4].copy_from_slice(&(total as u16).to_le_bytes());
    let crc = crc16(&p);
    p.extend_from_slice(&crc.to_le_bytes());
    p
}

#[test]
fn decoder_resynchronises_on_noise_bad_crc_and_lengths() {
    let good = reply(1, 1, code::ACK, &[]);
    let mut bad = good.clone();
    bad[5] ^= 0xFF;
    let mut d = Decoder::default();
    d.push(&[0x00, 0x12, SOM, 0x81, 0xFF, 0xFF, 0x04]); // an impossible length
    d.push(&bad);
    d.push(&good[..4]);
    let mut got = Vec::new();
    while let Some(p) = d.next_packet() {
        got.push(p.map(|p| p.len()));
    }
    assert!(got.contains(&Err(FrameError::Length)));
    assert!(got.contains(&Err(FrameError::Crc)));
    assert!(!got.iter().any(|r| r.is_ok()));
    d.push(&good[4..]);
    assert_eq!(d.next_packet(), Some(Ok(good.clone())));
    assert_eq!(d.next_packet(), None);
    // A long run of garbage is not kept.
    d.push(&vec![0x11; 100_000]);
    assert_eq!(d.next_packet(), None);
    assert_eq!(d.buffered(), 0);
    // A header claiming MAX_PACKET waits for at most that much.
    d.push(&[SOM, 0x81, 0x00, 0x04, 0x04]);
    d.push(&vec![0x22; 2000]);
    while d.next_packet().is_some() {}
    assert!(d.buffered() <= MAX_PACKET);
}

fn seq_of(packet: &[u8]) -> u8 {
    packet[5] & 3
}

/// A control panel for reader 1 without Secure Channel, past ID (seq 0) and CAP (seq 1) with
/// the reader's `caps`.
fn cp_after_id_and_cap(t0: Instant, caps: &[u8]) -> Cp {
    let mut cp = Cp::new(
        ReaderSettings::new(1, None, Duration::from_secs(5)),
        Box::new(|| [0; 8]),
        t0,
    );
    cp.opened(t0);
    cp.bytes(&reply(1, 0, code::PDID, &[0; 12]), t0);
    cp.bytes(&reply(1, 1, code::PDCAP, caps), t0);
    cp
}

#[test]
fn insecure_link_comes_up_polls_and_reads_a_pin() {
    let t0 = Instant::now();
    let mut cp = Cp::new(
        ReaderSettings::new(1, None, Duration::from_secs(5)),
        Box::new(|| [0; 8]),
        t0,
    );
    let s = cp.opened(t0);
    assert_eq!(s.send[0][6], code::ID);
    assert_eq!(seq_of(&s.send[0]), 0);
    let s = cp.bytes(&reply(1, 0, code::PDID, &[0; 12]), t0);
    assert_eq!(s.send[0][6], code::CAP);
    assert_eq!(seq_of(&s.send[0]), 1);
    let s = cp.bytes(&reply(1, 1, code::PDCAP, &[1, 1, 1]), t0);
    assert_eq!(s.happened, vec![Happening::Online(LinkReason::PortOpened)]);
    assert_eq!(s.send[0][6], code::POLL);
    assert_eq!(seq_of(&s.send[0]), 2);
    // "12" then "34#" in two KEYPAD replies.
    let s = cp.bytes(&reply(1, 2, code::KEYPAD, &[0, 2, b'1', b'2']), t0);
    assert!(s.happened.is_empty());
    let t1 = t0 + Duration::from_millis(100);
    let s = cp.tick(t1);
    assert_eq!(seq_of(&s.send[0]), 3);
    let s = cp.bytes(&reply(1, 3, code::KEYPAD, &[0, 3, b'3', b'4', 0x0D]), t1);
    assert_eq!(
        s.happened,
        vec![Happening::Credential {
            kind: CredentialKind::Pin,
            value: "1234".into()
        }]
    );
    // Sequence wraps 3 → 1.
    let s = cp.tick(t1 + Duration::from_millis(100));
    assert_eq!(seq_of(&s.send[0]), 1);
}

#[test]
fn silence_retries_with_the_same_sequence_for_8_s_then_goes_offline_and_restarts() {
    let t0 = Instant::now();
    let mut cp = cp_after_id_and_cap(t0, &[]);
    let unlock = cp.command(Cmd::Unlock { pulse: None }, t0);
    assert!(unlock.send.is_empty(), "a POLL is in flight");
    let ms = |n| t0 + Duration::from_millis(n);
    // Every 200 ms the same packet again, same sequence number; no outage for 8 s.
    for n in (200..8_000).step_by(200) {
        let s = cp.tick(ms(n));
        assert_eq!(s.send.len(), 1, "at {n} ms");
        assert_eq!(seq_of(&s.send[0]), 2, "at {n} ms");
        assert!(s.happened.is_empty(), "at {n} ms: {:?}", s.happened);
    }
    let s = cp.tick(ms(8_000));
    assert!(s
        .happened
        .contains(&Happening::Offline(LinkReason::PollTimeout)));
    assert!(s.happened.contains(&Happening::Done {
        cmd: Cmd::Unlock { pulse: None },
        result: Err(SerialFailure::DeviceOffline)
    }));
    assert!(cp.tick(ms(8_900)).send.is_empty());
    let s = cp.tick(ms(9_000));
    assert_eq!(s.send[0][6], code::ID);
    assert_eq!(seq_of(&s.send[0]), 0);
    cp.bytes(&reply(1, 0, code::PDID, &[0; 12]), ms(9_010));
    let s = cp.bytes(&reply(1, 1, code::PDCAP, &[]), ms(9_020));
    assert_eq!(s.happened, vec![Happening::Online(LinkReason::PollReply)]);
}

#[test]
fn a_lost_reply_is_not_an_outage_and_busy_repeats_the_command_with_its_data() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut cp = cp_after_id_and_cap(t0, &[]);
    // POLL (seq 2) lost once, answered on its retry; the next POLL (seq 3) follows.
    let s = cp.tick(ms(200));
    assert_eq!(seq_of(&s.send[0]), 2);
    let s = cp.bytes(&reply(1, 2, code::ACK, &[]), ms(210));
    assert!(s.happened.is_empty());
    assert_eq!(seq_of(&s.send[0]), 3);
    // An unlock waits for that POLL's answer, then goes out as an OUT (seq 1)...
    let unlock = Cmd::Unlock {
        pulse: Some(Duration::from_secs(2)),
    };
    assert!(cp.command(unlock, ms(300)).send.is_empty());
    let s = cp.bytes(&reply(1, 3, code::ACK, &[]), ms(305));
    let out = s.send[0].clone();
    assert_eq!((out[6], seq_of(&out)), (code::OUT, 1));
    // ...answered BUSY (sequence number 0, as readers send it): nothing is sent for 800 ms,
    // then the same OUT, same sequence number, same data — the same bytes.
    let s = cp.bytes(&reply(1, 0, code::BUSY, &[]), ms(310));
    assert!(s.send.is_empty() && s.happened.is_empty());
    assert!(cp.tick(ms(1_000)).send.is_empty(), "held after BUSY");
    let s = cp.tick(ms(1_110));
    assert_eq!(s.send.len(), 1);
    assert_eq!(s.send[0], out);
    assert_eq!(&s.send[0][7..11], &[0, 5, 20, 0]);
    // A BUSY with data, or from another address, is not a BUSY: ignored.
    assert_eq!(cp.plain_signal(&reply(1, 0, code::BUSY, &[1]), 1), None);
    assert_eq!(cp.plain_signal(&reply(2, 0, code::BUSY, &[]), 1), None);
    // Answered with the output's status (osdp_OSTATR): carried out.
    let s = cp.bytes(&reply(1, 1, code::OSTATR, &[1]), ms(1_120));
    assert!(s.happened.contains(&Happening::Done {
        cmd: unlock,
        result: Ok(())
    }));
    // A reader busy while it starts up: its ID comes again, the same packet, after the pause
    // (not left waiting for a queue that only runs once it is online).
    let mut fresh = Cp::new(
        ReaderSettings::new(1, None, Duration::from_secs(1)),
        Box::new(|| [0; 8]),
        t0,
    );
    let id = fresh.opened(t0).send[0].clone();
    assert!(fresh
        .bytes(&reply(1, 0, code::BUSY, &[]), ms(5))
        .send
        .is_empty());
    assert_eq!(fresh.next_deadline(), Some(ms(805)));
    assert_eq!(fresh.tick(ms(805)).send, vec![id]);
}

#[test]
fn card_reads_are_decoded_by_the_readers_format_and_bad_parity_is_refused() {
    let t0 = Instant::now();
    let mut cp = cp_after_id_and_cap(t0, &[]);
    // Wiegand 26, facility 1, card 2: bits 0 00000001 0000000000000010 1 (parities computed).
    let data: u32 = 1 << 16 | 2;
    let even = (data >> 12).count_ones() % 2;
    let odd = 1 - (data & 0xFFF).count_ones() % 2;
    let bits: u32 = even << 25 | data << 1 | odd;
    let packed = (bits << 6).to_be_bytes();
    let raw = |bytes: [u8; 4]| {
        let mut d = vec![0, 1, 26, 0];
        d.extend_from_slice(&bytes);
        d
    };
    let s = cp.bytes(&reply(1, 2, code::RAW, &raw(packed)), t0);
    assert_eq!(
        s.happened,
        vec![Happening::Credential {
            kind: CredentialKind::Card,
            value: "1:2".into()
        }]
    );
    let t1 = t0 + Duration::from_millis(100);
    let _ = cp.tick(t1);
    let bad = ((bits ^ 1) << 6).to_be_bytes();
    let s = cp.bytes(&reply(1, 3, code::RAW, &raw(bad)), t1);
    assert_eq!(
        s.happened,
        vec![Happening::CardUnreadable {
            error: "parity error".into()
        }]
    );
    // osdp_FMT: the characters as the reader formatted them.
    let t2 = t1 + Duration::from_millis(100);
    let _ = cp.tick(t2);
    let s = cp.bytes(
        &reply(1, 1, code::FMT, &[0, 0, 5, b'1', b'2', b'3', b'4', b'5']),
        t2,
    );
    assert_eq!(
        s.happened,
        vec![Happening::Credential {
            kind: CredentialKind::Card,
            value: "12345".into()
        }]
    );
}

/// A minimal secure PD built from the spec's formulas, to drive the CP without hardware.
/// A CP through the Secure Channel handshake with reader 5, and the reader's session (after
/// the first POLL, which is in `.2`).
fn secure_cp_online(t0: Instant) -> (Cp, Session, Vec<u8>) {
    let scbk = [0x42u8; 16];
    let mut cp = Cp::new(
        ReaderSettings::new(5, Some(scbk), Duration::from_millis(1500)),
        Box::new(|| [1, 2, 3, 4, 5, 6, 7, 8]),
        t0,
    );
    cp.opened(t0);
    cp.bytes(&reply(5, 0, code::PDID, &[0; 12]), t0);
    let s = cp.bytes(&reply(5, 1, code::PDCAP, &[9, 1, 0]), t0);
    let chlng = &s.send[0];
    assert_eq!(&chlng[6..9], &[3, 0x11, 1]);
    assert_eq!(chlng[9], code::CHLNG);
    let mut pd = Session::new(&scbk, [1, 2, 3, 4, 5, 6, 7, 8]);
    let pd_random = [0xAA; 8];
    let mut data = vec![0u8; 8];
    data.extend_from_slice(&pd_random);
    data.extend_from_slice(&sc::pd::client_cryptogram(&pd, &pd_random));
    let s = cp.bytes(&reply(5, 2, code::CCRYPT, &data), t0);
    let scrypt = &s.send[0];
    assert_eq!(scrypt[9], code::SCRYPT);
    let server: Block = scrypt[10..26].try_into().unwrap();
    let rmac = sc::pd::rmac_i(&pd, &server);
    let s = cp.bytes(&reply(5, 3, code::RMAC_I, &rmac), t0);
    assert_eq!(s.happened, vec![Happening::Online(LinkReason::PortOpened)]);
    assert!(cp.sc_active());
    sc::pd::start(&mut pd, rmac);
    (cp, pd, s.send[0].clone())
}

#[test]
fn secure_channel_handshake_then_encrypted_out_and_keypad() {
    let t0 = Instant::now();
    let (mut cp, mut pd, poll) = secure_cp_online(t0);
    // The first POLL carries SCS_15 and a MAC the PD can check.
    let poll = &poll;
    assert_eq!(&poll[6..8], &[2, 0x15]);
    // Answer it with a secured, encrypted KEYPAD "9#".
    pd_accept_command(&mut pd, poll);
    let keypad = secure_reply(&mut pd, 5, 1, code::KEYPAD, &[0, 2, b'9', b'#']);
    let s = cp.bytes(&keypad, t0);
    assert_eq!(
        s.happened,
        vec![Happening::Credential {
            kind: CredentialKind::Pin,
            value: "9".into()
        }]
    );
    // A reply with a broken MAC takes the link down.
    let s = cp.tick(t0 + Duration::from_millis(100));
    let poll = &s.send[0];
    pd_accept_command(&mut pd, poll);
    let mut forged = secure_reply(&mut pd, 5, 2, code::ACK, &[]);
    let n = forged.len();
    forged[n - 3] ^= 1; // inside the MAC
    let crc = crc16(&forged[..n - 2]);
    forged[n - 2..].copy_from_slice(&crc.to_le_bytes());
    let s = cp.bytes(&forged, t0);
    assert!(s
        .happened
        .contains(&Happening::Offline(LinkReason::PollTimeout)));
    assert_eq!(cp.counters.sc_failures, 1);
}

#[test]
fn a_reader_that_lost_the_session_to_a_lost_reply_is_keyed_again_and_stays_online() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let (mut cp, mut pd, poll) = secure_cp_online(t0);
    pd_accept_command(&mut pd, &poll);
    // The reader's answer to the POLL is lost; the repeat (same packet) is refused by the
    // reader, which left Secure Channel: a plain NAK 6 with the POLL's sequence number.
    let s = cp.tick(ms(250));
    assert_eq!(s.send, vec![poll.clone()], "the repeat is the same packet");
    let s = cp.bytes(&reply(5, seq_of(&poll), code::NAK, &[6]), ms(260));
    assert!(s.happened.is_empty(), "not offline: {:?}", s.happened);
    assert_eq!((s.send[0][9], seq_of(&s.send[0])), (code::CHLNG, 0));
    assert!(!cp.sc_active());
    // A plain NAK from another address, or with another reason, is not that.
    let (mut cp, _, poll) = secure_cp_online(t0);
    cp.tick(ms(250));
    let s = cp.bytes(&reply(5, seq_of(&poll), code::NAK, &[1]), ms(260));
    assert!(s
        .happened
        .contains(&Happening::Offline(LinkReason::PollTimeout)));
}

/// The PD side checks the command's MAC; its C-MAC is the IV of the reply's MAC.
fn pd_accept_command(pd: &mut Session, packet: &[u8]) {
    let body = &packet[1..packet.len() - 2];
    let (data, mac) = body.split_at(body.len() - 4);
    assert!(
        sc::pd::accept_command(pd, data, mac),
        "the CP's MAC checks out"
    );
}

fn secure_reply(pd: &mut Session, address: u8, seq: u8, code: u8, data: &[u8]) -> Vec<u8> {
    let enc = if data.is_empty() {
        Vec::new()
    } else {
        sc::pd::encrypt_reply(pd, data)
    };
    let scs = if data.is_empty() { 0x16 } else { 0x18 };
    let mut p = vec![
        SOM,
        address | 0x80,
        0,
        0,
        seq | CTRL_CRC | CTRL_SCB,
        2,
        scs,
        code,
    ];
    p.extend(enc);
    let total = p.len() + 4 + 2;
    p[2..4].copy_from_slice(&(total as u16).to_le_bytes());
    let mac = sc::pd::sign_reply(pd, &p);
    p.extend_from_slice(&mac);
    let crc = crc16(&p);
    p.extend_from_slice(&crc.to_le_bytes());
    p
}

#[test]
fn a_refused_command_fails_with_the_nak_reason_and_the_hub_hears_nak() {
    let t0 = Instant::now();
    let mut cp = cp_after_id_and_cap(t0, &[1, 1, 1]);
    // The POLL (seq 2) is answered; the unlock goes out next.
    cp.bytes(&reply(1, 2, code::ACK, &[]), t0);
    let unlock = Cmd::Unlock { pulse: None };
    let mut s = cp.command(unlock, t0);
    if s.send.is_empty() {
        s = cp.tick(t0 + Duration::from_millis(100));
    }
    let out = s
        .send
        .iter()
        .find(|p| p[6] == code::OUT)
        .expect("the OUT command is sent");
    let s = cp.bytes(&reply(1, seq_of(out), code::NAK, &[0x03]), t0);
    let failure = SerialFailure::Nak(3);
    assert_eq!(failure.action_error().as_str(), "nak");
    assert!(
        s.happened.contains(&Happening::Done {
            cmd: unlock,
            result: Err(failure)
        }),
        "{:?}",
        s.happened
    );
}

#[test]
fn a_reader_that_refuses_its_key_is_tried_on_scbk_d_and_given_its_key_with_keyset() {
    let scbk = [0x42u8; 16];
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut settings = ReaderSettings::new(5, Some(scbk), Duration::from_millis(1500));
    settings.install_scbk = true;
    let mut cp = Cp::new(settings, Box::new(|| [1, 2, 3, 4, 5, 6, 7, 8]), t0);
    // First on its own key (SCB data 1): the new reader refuses it (NAK).
    cp.opened(t0);
    cp.bytes(&reply(5, 0, code::PDID, &[0; 12]), t0);
    let s = cp.bytes(&reply(5, 1, code::PDCAP, &[9, 1, 0]), t0);
    assert_eq!(&s.send[0][6..9], &[3, 0x11, 1]);
    let s = cp.bytes(&reply(5, 2, code::NAK, &[6]), t0);
    assert!(s.happened.is_empty(), "never online, nothing to report");
    // After the retry wait, the default key (SCB data 0).
    let s = cp.tick(ms(1_000));
    assert_eq!(s.send[0][6], code::ID);
    cp.bytes(&reply(5, 0, code::PDID, &[0; 12]), ms(1_010));
    let s = cp.bytes(&reply(5, 1, code::PDCAP, &[9, 1, 0]), ms(1_020));
    assert_eq!(&s.send[0][6..9], &[3, 0x11, 0]);
    let mut pd = Session::new(&SCBK_D, [1, 2, 3, 4, 5, 6, 7, 8]);
    let pd_random = [0xAA; 8];
    let mut data = vec![0u8; 8];
    data.extend_from_slice(&pd_random);
    data.extend_from_slice(&sc::pd::client_cryptogram(&pd, &pd_random));
    let s = cp.bytes(&reply(5, 2, code::CCRYPT, &data), ms(1_030));
    let scrypt = &s.send[0];
    assert_eq!(
        (scrypt[9], &scrypt[6..9]),
        (code::SCRYPT, &[3u8, 0x13, 0][..])
    );
    let server: Block = scrypt[10..26].try_into().unwrap();
    let rmac = sc::pd::rmac_i(&pd, &server);
    // On SCBK-D the session is only for the key: a secured KEYSET, and not online yet.
    let s = cp.bytes(&reply(5, 3, code::RMAC_I, &rmac), ms(1_040));
    assert!(s.happened.is_empty(), "{:?}", s.happened);
    let keyset = &s.send[0];
    assert_eq!(&keyset[6..8], &[2, 0x17], "encrypted, with a MAC");
    sc::pd::start(&mut pd, rmac);
    pd_accept_command(&mut pd, keyset);
    // ACKed: the link starts over, on the new key (SCB data 1), sequence 0.
    let ack = secure_reply(&mut pd, 5, 1, code::ACK, &[]);
    let s = cp.bytes(&ack, ms(1_050));
    assert_eq!((s.send[0][6], seq_of(&s.send[0])), (code::ID, 0));
    cp.bytes(&reply(5, 0, code::PDID, &[0; 12]), ms(1_060));
    let s = cp.bytes(&reply(5, 1, code::PDCAP, &[9, 1, 0]), ms(1_070));
    assert_eq!(&s.send[0][6..9], &[3, 0x11, 1]);
}

#[test]
fn the_door_contact_input_is_asked_at_link_up_and_reported_when_it_changes() {
    let t0 = Instant::now();
    let mut settings = ReaderSettings::new(1, None, Duration::from_secs(5));
    settings.contact_input = Some(2);
    let mut cp = Cp::new(settings, Box::new(|| [0; 8]), t0);
    cp.opened(t0);
    cp.bytes(&reply(1, 0, code::PDID, &[0; 12]), t0);
    // Online after CAP: the first thing asked is the inputs (osdp_ISTAT, no data).
    let s = cp.bytes(&reply(1, 1, code::PDCAP, &[]), t0);
    assert_eq!(s.happened, [Happening::Online(LinkReason::PortOpened)]);
    assert_eq!((s.send[0][6], s.send[0].len()), (code::ISTAT, 9));
    // Input 2 inactive: shut.
    let s = cp.bytes(&reply(1, 2, code::ISTATR, &[1, 1, 0, 1]), t0);
    assert_eq!(s.happened, [Happening::Contact { closed: true }]);
    // The same state in answer to a poll says nothing; a change says it once. Each answer goes
    // to the packet in flight (sent at once, or when the next poll is due).
    let mut pending = s.send;
    let mut t = t0;
    let mut answer = |cp: &mut Cp, data: &[u8]| {
        while pending.is_empty() {
            t += Duration::from_millis(50);
            pending = cp.tick(t).send;
        }
        let packet = pending.remove(0);
        assert_eq!(packet[6], code::POLL);
        let s = cp.bytes(&reply(1, seq_of(&packet), code::ISTATR, data), t);
        pending = s.send;
        s.happened
    };
    assert!(answer(&mut cp, &[0, 0, 0, 0]).is_empty());
    assert_eq!(
        answer(&mut cp, &[0, 0, 1, 0]),
        [Happening::Contact { closed: false }]
    );
    // A report too short to hold input 2 (a reader with fewer inputs, or a broken one) is no
    // state: nothing reported, the link stays up.
    assert!(answer(&mut cp, &[1]).is_empty());
    assert!(answer(&mut cp, &[]).is_empty());
    assert!(cp.online);
}

#[test]
fn a_reader_that_refuses_istat_stays_online_and_its_door_has_no_state() {
    let t0 = Instant::now();
    let mut settings = ReaderSettings::new(1, None, Duration::from_secs(5));
    settings.contact_input = Some(0);
    let mut cp = Cp::new(settings, Box::new(|| [0; 8]), t0);
    cp.opened(t0);
    cp.bytes(&reply(1, 0, code::PDID, &[0; 12]), t0);
    cp.bytes(&reply(1, 1, code::PDCAP, &[]), t0);
    // NAK 3: command not implemented.
    let s = cp.bytes(&reply(1, 2, code::NAK, &[3]), t0);
    assert!(s.happened.is_empty(), "{:?}", s.happened);
    assert!(cp.online);
}
