use super::*;

const MINIMAL: &str = r#"
[controller]
id = "edge-4a"
organization_id = "org-123"
meeting_space_id = "ms-xyz789"
state_dir = "/tmp/zenedge-test"

[zencore]
webhook_url = "https://zencore.example.com/webhooks/zenedge"
secret = "s3cret-s3cret-s3cret-s3cret"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

fn key_of(err: ConfigError) -> String {
    match err {
        ConfigError::Key { key, .. } => key,
        other => panic!("expected a key error, got {other}"),
    }
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.delivery.concurrency, 4);
    assert_eq!(c.delivery.initial_backoff, Duration::from_secs(1));
    assert_eq!(c.delivery.max_backoff, Duration::from_secs(300));
    assert_eq!(c.delivery.max_age, Duration::from_secs(7 * 86400));
    assert_eq!(c.delivery.max_store_bytes, ByteSize(512 * 1024 * 1024));
    assert_eq!(c.zencore.timeout, Duration::from_secs(30));
    assert_eq!(c.inbound.listen.to_string(), "0.0.0.0:8787");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8788");
    assert_eq!(c.presence.debounce, Duration::from_secs(5));
    assert!(c.clock.require_sync);
    assert_eq!(c.mqtt_client_id(), "zenedge-edge-4a");
    assert_eq!(
        c.inbound.verifying_secrets(),
        vec![Secret::new("s3cret-s3cret-s3cret-s3cret")]
    );
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
            ("[delivery]\nmax_backoff = \"soon\"\n", "delivery.max_backoff"),
            ("[delivery]\nconcurency = 4\n", "delivery.concurency"),
            ("[delivery]\nconcurrency = \"four\"\n", "delivery.concurrency"),
            ("[delivery]\nconcurrency = 0\n", "delivery.concurrency"),
            ("[delivery]\nmax_store_bytes = \"12 parsecs\"\n", "delivery.max_store_bytes"),
            (
                "[delivery]\ninitial_backoff = \"10s\"\nmax_backoff = \"1s\"\n",
                "delivery.max_backoff",
            ),
            ("[surprise]\nx = 1\n", "surprise"),
            (
                "[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\n",
                "devices[0].topic",
            ),
            (
                "[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"t\"\ncoil = 1\n",
                "devices[0].coil",
            ),
            (
                "[[devices]]\nid = \"d\"\ntype = \"panel\"\ndriver = \"zigbee2mqtt\"\ntopic = \"t\"\n",
                "devices[0].type",
            ),
            (
                "[[devices]]\nid = \"r\"\ntype = \"reader\"\ndriver = \"osdp\"\nport = \"/dev/ttyUSB0\"\n",
                "devices[0].scbk",
            ),
            (
                "[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"a\"\n[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"b\"\n",
                "devices[1].id",
            ),
            (
                "[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zwave\"\n",
                "devices[0].driver",
            ),
        ];
    for (extra, want) in cases {
        let text = format!("{MINIMAL}{extra}");
        let err = parse(&text).expect_err(extra);
        assert_eq!(key_of(err), *want, "for {extra:?}");
    }
}

#[test]
fn unknown_key_message_names_the_field() {
    let err = parse(&format!("{MINIMAL}[delivery]\nconcurency = 4\n")).unwrap_err();
    assert!(err.to_string().contains("concurency"), "{err}");
}

#[test]
fn secret_or_secret_file_not_both_and_file_loses_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-file-from-file-from-file\n").unwrap();
    private(&file);
    let text = MINIMAL.replace(
        "secret = \"s3cret-s3cret-s3cret-s3cret\"",
        &format!("secret_file = {:?}", file.display().to_string()),
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.zencore.secret().expose(), "from-file-from-file-from-file");

    let both = MINIMAL.replace(
        "secret = \"s3cret-s3cret-s3cret-s3cret\"",
        &format!(
            "secret = \"x\"\nsecret_file = {:?}",
            file.display().to_string()
        ),
    );
    assert_eq!(key_of(parse(&both).unwrap_err()), "zencore.secret");
    let none = MINIMAL.replace("secret = \"s3cret-s3cret-s3cret-s3cret\"", "");
    assert_eq!(key_of(parse(&none).unwrap_err()), "zencore.secret");
}

fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)).unwrap();
}

#[test]
fn loose_or_symlinked_secret_files_are_refused_naming_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-file-from-file-from-file\n").unwrap();
    let with = |path: &Path| {
        MINIMAL.replace(
            "secret = \"s3cret-s3cret-s3cret-s3cret\"",
            &format!("secret_file = {:?}", path.display().to_string()),
        )
    };
    for mode in [0o644, 0o666, 0o604, 0o602] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = parse(&with(&file)).unwrap_err();
        assert!(e.to_string().contains("other users"), "{mode:o}: {e}");
        assert_eq!(key_of(e), "zencore.secret_file");
    }
    private(&file);
    assert!(parse(&with(&file)).is_ok());
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let e = parse(&with(&link)).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert_eq!(key_of(e), "zencore.secret_file");
}

#[test]
fn bad_whsec_secret_is_rejected() {
    let text = MINIMAL.replace("\"s3cret-s3cret-s3cret-s3cret\"", "\"whsec_not base64!\"");
    assert_eq!(key_of(parse(&text).unwrap_err()), "zencore.secret");
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let err = parse("[controller\nid=1").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("test.toml") && text.contains("line 1"),
        "{text}"
    );
}

#[test]
fn byte_sizes() {
    assert_eq!(ByteSize::parse("512MiB"), Ok(ByteSize(512 << 20)));
    assert_eq!(ByteSize::parse("64 MB"), Ok(ByteSize(64_000_000)));
    assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
    assert!(ByteSize::parse("MiB").is_err());
    assert!(ByteSize::parse("99999999999999999999GiB").is_err());
}

#[test]
fn debug_never_shows_secrets() {
    let c = parse(MINIMAL).unwrap();
    assert!(!format!("{c:?}").contains("s3cret-s3cret-s3cret-s3cret"));
    assert!(!c.summary().contains("s3cret-s3cret-s3cret-s3cret"));
}

#[test]
fn example_config_is_valid() {
    // The example names the secret file the Debian package writes; here, a file of ours.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("zencore.secret");
    std::fs::write(
        &secret,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr\n",
    )
    .unwrap();
    private(&secret);
    let text = include_str!("../../config.example.toml").replace(
        "\"/etc/zenedge/zencore.secret\"",
        &format!("{:?}", secret.display().to_string()),
    );
    // The group the Debian package creates; here, one every Debian system has.
    let text = text.replace("\"zenedge-operators\"", "\"root\"");
    assert_ne!(text, include_str!("../../config.example.toml"));
    let c = parse(&text).unwrap();
    assert!(!c.devices.is_empty());
}

#[test]
fn weak_and_placeholder_secrets_are_refused_naming_the_key() {
    for (secret, want) in [
        ("change-me", "placeholder"),
        ("x", "1-byte key"),
        ("whsec_YWJj", "3-byte key"),
        ("twenty-three-bytes-long", "23-byte key"),
    ] {
        let text = MINIMAL.replace("\"s3cret-s3cret-s3cret-s3cret\"", &format!("{secret:?}"));
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("zencore.secret") && e.contains(want),
            "{secret}: {e}"
        );
    }
    let extra = MINIMAL.replace("[zencore]", "[zencore]\nextra_secrets = [\"old\"]");
    let e = parse(&extra).unwrap_err().to_string();
    assert!(e.contains("zencore.extra_secrets[0]"), "{e}");
    let inbound = format!("{MINIMAL}\n[inbound]\nsecret = \"secret\"\n");
    let e = parse(&inbound).unwrap_err().to_string();
    assert!(
        e.contains("inbound secret #1") && e.contains("placeholder"),
        "{e}"
    );
    let ok = MINIMAL.replace(
        "\"s3cret-s3cret-s3cret-s3cret\"",
        "\"twenty-four-bytes-long!!\"",
    );
    assert!(parse(&ok).is_ok());
}

#[test]
fn two_devices_on_one_topic_and_wildcard_bases_are_refused() {
    let lock = |id: &str, room: &str, topic: &str| {
        format!(
            "[[devices]]\nid = \"{id}\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\n\
                 topic = \"{topic}\"\nmeeting_space_id = \"{room}\"\n"
        )
    };
    let text = format!(
        "{MINIMAL}{}{}",
        lock("front", "ms-a", "door"),
        lock("back", "ms-b", "door")
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains("devices[1].topic") && e.contains("`front`") && e.contains("devices[0]"),
        "{e}"
    );
    let ha = |id: &str, state: &str, command: &str| {
        format!(
            "[[devices]]\nid = \"{id}\"\ntype = \"lock\"\ndriver = \"homeassistant\"\n\
                 state_topic = \"{state}\"\ncommand_topic = \"{command}\"\n"
        )
    };
    let text = format!(
        "{MINIMAL}{}{}",
        ha("a", "s/a", "c/x"),
        ha("b", "s/b", "c/x")
    );
    assert_eq!(
        key_of(parse(&text).unwrap_err()),
        "devices[1].command_topic"
    );
    // Two Home Assistant locks sharing one availability topic (one ESPHome board) are fine.
    let text = format!(
        "{MINIMAL}{}{}",
        ha("a", "s/a", "c/a"),
        ha("b", "s/b", "c/b")
    );
    assert!(parse(&text).is_ok());
    for base in ["+", "#", "zigbee2mqtt/+", "/z2m", "z2m/", ""] {
        let text = format!("{MINIMAL}\n[mqtt]\nzigbee2mqtt_base = {base:?}\n");
        assert_eq!(
            key_of(parse(&text).unwrap_err()),
            "mqtt.zigbee2mqtt_base",
            "{base}"
        );
    }
}

#[test]
fn clear_text_credentials_to_remote_hosts_are_warned_about() {
    let with = |mqtt: &str, url: &str| {
        let text = MINIMAL.replace("https://zencore.example.com/webhooks/zenedge", url);
        parse(&format!(
            "{text}\n[inbound]\nlisten = \"127.0.0.1:8787\"\n[mqtt]\n{mqtt}\n"
        ))
        .unwrap()
        .warnings()
    };
    // The default inbound.listen (every address) without TLS.
    let w = parse(MINIMAL).unwrap().warnings();
    assert!(w.len() == 1 && w[0].contains("inbound.listen"), "{w:?}");
    let remote = "host = \"10.0.0.5\"\nusername = \"u\"\npassword = \"p\"";
    let w = with(remote, "https://zencore.example.com/h");
    assert!(
        w.len() == 1 && w[0].contains("mqtt.password") && w[0].contains("10.0.0.5"),
        "{w:?}"
    );
    let local = "host = \"127.0.0.1\"\nusername = \"u\"\npassword = \"p\"";
    assert!(with(local, "https://zencore.example.com/h").is_empty());
    let w = with("", "http://zencore.example.com/h");
    assert!(
        w.len() == 1 && w[0].contains("zencore.webhook_url"),
        "{w:?}"
    );
    assert!(with("", "http://127.0.0.1:9/h").is_empty());
}

#[test]
fn the_command_channel_is_configured_or_refused_naming_the_key() {
    let with = |commands: &str, inbound: &str| {
        parse(&format!(
            "{MINIMAL}\n[inbound]\n{inbound}\n[commands]\n{commands}\n"
        ))
    };
    let c = with(
        "transport = \"mqtt\"\nurl = \"wss://zencore.example/mqtt\"\nalpn = [\"x-amzn-mqtt-ca\"]\nproxy = \"http://proxy:3128\"",
        "listen = \"\"",
    )
    .unwrap();
    assert_eq!(c.inbound.listen.0, None);
    let b = c.commands.broker().unwrap();
    assert_eq!((b.scheme, b.port), (crate::config::Scheme::Wss, 443));
    assert_eq!(c.commands.proxy_addr(), Some(&("proxy".to_owned(), 3128)));
    assert!(c
        .summary()
        .contains("commands     transport mqtt, channel wss://"));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    // Absent, the section means HTTP only.
    assert!(parse(MINIMAL).unwrap().commands.broker().is_none());

    let refused = |commands: &str, inbound: &str, key: &str, says: &str| {
        let e = with(commands, inbound).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(says), "{commands}: {e}");
    };
    refused("transport = \"mqtt\"", "", "commands.url", "missing");
    refused(
        "transport = \"mqtt\"\nurl = \"https://x\"",
        "",
        "commands.url",
        "scheme",
    );
    refused(
        "transport = \"pigeon\"\nurl = \"mqtts://x\"",
        "",
        "commands.transport",
        "unknown variant",
    );
    refused(
        "transport = \"mqtt\"\nurl = \"mqtt://x\"\nalpn = [\"h2\"]",
        "",
        "commands.alpn",
        "TLS",
    );
    refused(
        "transport = \"mqtt\"\nurl = \"mqtts://x\"\nclient_cert_file = \"/c\"",
        "",
        "commands.client_cert_file",
        "go together",
    );
    refused(
        "transport = \"mqtt\"\nurl = \"mqtts://x\"\npassword = \"p\"",
        "",
        "commands.username",
        "missing",
    );
    refused(
        "transport = \"mqtt\"\nurl = \"mqtts://x\"\ntopic_prefix = \"a/#\"",
        "",
        "commands.topic_prefix",
        "wildcards",
    );
    refused(
        "transport = \"mqtt\"\nurl = \"mqtts://x\"\nproxy = \"socks5://p:1\"",
        "",
        "commands.proxy",
        "http://",
    );
    refused(
        "transport = \"http\"",
        "listen = \"\"",
        "inbound.listen",
        "no command could",
    );
    refused(
        "transport = \"mqtt\"\nurl = \"mqtts://x\"",
        "listen = \"nowhere\"",
        "inbound.listen",
        "not an address",
    );

    // Clear text to another host is allowed, and warned about; a listen that is not served too.
    let c = with(
        "transport = \"mqtt\"\nurl = \"mqtt://10.0.0.9\"",
        "listen = \"0.0.0.0:8787\"",
    )
    .unwrap();
    let w = c.warnings();
    assert!(
        w.iter()
            .any(|x| x.contains("commands.url") && x.contains("clear")),
        "{w:?}"
    );
    assert!(w.iter().any(|x| x.contains("is not served")), "{w:?}");
}

#[test]
fn driver_keys_as_installers_use_them_are_checked() {
    let with = |devices: &str| parse(&format!("{MINIMAL}\n{devices}"));
    let tasmota = |id: &str, relay: u8| {
        format!("[[devices]]\nid = \"{id}\"\ntype = \"strike\"\ndriver = \"tasmota\"\ntopic = \"board\"\nrelay = {relay}\n")
    };
    // Two relays of one board are two doors on one topic.
    assert!(with(&format!("{}{}", tasmota("left", 1), tasmota("right", 2))).is_ok());
    let refused = |devices: &str, key: &str, says: &str| {
        let e = with(devices).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(says), "{e}");
    };
    refused(
        &format!("{}{}", tasmota("left", 2), tasmota("right", 2)),
        "devices[1].topic",
        "left",
    );
    refused(&tasmota("left", 9), "devices[0].relay", "1..=8");
    refused(
        &tasmota("left", 1).replace("relay = 1", "full_topic = \"%topic%/%hostname%/\""),
        "devices[0].full_topic",
        "%prefix%",
    );
    refused(
        "[[devices]]\nid = \"s\"\ntype = \"strike\"\ndriver = \"shelly\"\ntopic = \"shellyplus1-x\"\n",
        "devices[0].pulse",
        "required by driver shelly",
    );
    refused(
        "[[devices]]\nid = \"z\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"t\"\nrelay = 2\n",
        "devices[0].relay",
        "not used by driver zigbee2mqtt",
    );
    refused(
        "[[devices]]\nid = \"h\"\ntype = \"lock\"\ndriver = \"homeassistant\"\nstate_topic = \"a\"\ncommand_topic = \"b\"\nstate_locked = \"\"\n",
        "devices[0].state_locked",
        "must not be empty",
    );
    refused(
        "[[devices]]\nid = \"t\"\ntype = \"strike\"\ndriver = \"tasmota\"\ntopic = \"t\"\nvalue_json = \"state\"\n",
        "devices[0].value_json",
        "not used by driver tasmota",
    );
    // Two Zigbee networks may use the same device topic, each under its own base.
    let z2m = |id: &str, base: &str| {
        format!("[[devices]]\nid = \"{id}\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"door\"\nbase = \"{base}\"\n")
    };
    assert!(with(&format!("{}{}", z2m("a", "z2m-1"), z2m("b", "z2m-2"))).is_ok());
    refused(
        &format!("{}{}", z2m("a", "z2m-1"), z2m("b", "z2m-1")),
        "devices[1].topic",
        "a",
    );
}

#[test]
fn devices_on_one_serial_port_share_its_bus_or_are_refused_naming_both() {
    let relay = |id: &str, address: u8, coil: u16, baud: u32| {
        format!("[[devices]]\nid = \"{id}\"\ntype = \"strike\"\ndriver = \"modbus-relay\"\nport = \"/dev/ttyUSB0\"\naddress = {address}\ncoil = {coil}\nbaud = {baud}\n")
    };
    let reader = |id: &str, address: u8| {
        format!("[[devices]]\nid = \"{id}\"\ntype = \"reader\"\ndriver = \"osdp\"\nport = \"/dev/ttyUSB1\"\naddress = {address}\ninsecure = true\n")
    };
    let with = |devices: &[String]| parse(&format!("{MINIMAL}\n{}", devices.concat()));
    // Two coils of one board, a second board, two readers: as buildings are wired.
    assert!(with(&[
        relay("a", 1, 0, 9600),
        relay("b", 1, 1, 9600),
        relay("c", 2, 0, 9600),
        reader("r1", 0),
        reader("r2", 1),
    ])
    .is_ok());
    let refused = |devices: &[String], says: &str| {
        let e = with(devices).unwrap_err().to_string();
        assert!(
            e.contains("devices[1].port") && e.contains("`a`") && e.contains(says),
            "{e}"
        );
    };
    refused(
        &[relay("a", 1, 0, 9600), relay("b", 1, 0, 9600)],
        "coil 0 of board 1",
    );
    refused(
        &[relay("a", 1, 0, 9600), relay("b", 2, 0, 19200)],
        "one baud rate",
    );
    refused(&[reader("a", 3), reader("b", 3)], "OSDP address 3");
    let osdp_on_relay_port = reader("b", 3).replace("/dev/ttyUSB1", "/dev/ttyUSB0");
    refused(
        &[relay("a", 1, 0, 9600), osdp_on_relay_port],
        "one protocol",
    );
}

#[test]
fn each_driver_is_decoded_into_its_own_settings_with_its_defaults_applied_once() {
    let c = parse(&format!(
        "{MINIMAL}
[[devices]]
id = \"relay\"
type = \"strike\"
driver = \"modbus-relay\"
port = \"/dev/ttyUSB0\"
[[devices]]
id = \"ha\"
type = \"lock\"
driver = \"homeassistant\"
state_topic = \"nuki/state\"
command_topic = \"nuki/lockAction\"
payload_open = \"unlatch\"
[[devices]]
id = \"board\"
type = \"strike\"
driver = \"tasmota\"
topic = \"board\"
[[devices]]
id = \"reader\"
type = \"reader\"
driver = \"osdp\"
port = \"/dev/ttyUSB1\"
insecure = true
"
    ))
    .unwrap();
    let DriverConfig::ModbusRelay(m) = &c.devices[0].settings else {
        panic!("{:?}", c.devices[0])
    };
    assert_eq!(
        (m.baud, m.address, m.coil, m.pulse, m.flash),
        (9600, 1, 0, Duration::from_secs(5), false)
    );
    assert_eq!(c.devices[0].action_timeout, Duration::from_secs(10));
    let h = c.devices[1].homeassistant().unwrap();
    assert_eq!(
        (h.payload_lock.as_str(), h.payload_unlock.as_str()),
        ("LOCK", "UNLOCK")
    );
    assert_eq!(h.payload_open.as_deref(), Some("unlatch"));
    assert_eq!(
        (h.state_locked.as_str(), h.state_jammed.as_str()),
        ("LOCKED", "JAMMED")
    );
    let t = c.devices[2].tasmota().unwrap();
    assert_eq!((t.relay, t.full_topic.as_str()), (1, "%prefix%/%topic%/"));
    assert_eq!(t.topic_for("cmnd", "POWER"), "cmnd/board/POWER");
    let DriverConfig::Osdp(o) = &c.devices[3].settings else {
        panic!("{:?}", c.devices[3])
    };
    assert_eq!((o.address, o.install_scbk, o.pulse), (1, false, None));
    assert!(!c.devices[3].is_door(), "a reader without a strike pulse");
    assert_eq!(
        c.devices[3].serial_port().map(|(p, b)| (p.to_owned(), b)),
        Some(("/dev/ttyUSB1".into(), 9600))
    );
}

#[test]
fn a_device_entry_of_the_wrong_shape_or_with_a_key_its_driver_lacks_is_named() {
    let cases = [
        ("[devices]\nid = \"a\"\n", "devices", "[[devices]]"),
        (
            "[[devices]]\nid = \"p\"\ntype = \"panel\"\ndriver = \"zenedge-panel\"\ntopic = \"x\"\n",
            "devices[0].topic",
            "not used by driver zenedge-panel",
        ),
        (
            "[[devices]]\nid = \"t\"\ntype = \"strike\"\ndriver = \"tasmota\"\ntopic = \"t\"\nrelay = \"two\"\n",
            "devices[0].relay",
            "expected u8",
        ),
        (
            "[[devices]]\nid = \"t\"\ntype = \"strike\"\ndriver = \"tasmota\"\ntopic = \"t/#\"\n",
            "devices[0].topic",
            "wildcards",
        ),
        (
            "[[devices]]\ntype = \"strike\"\ndriver = \"tasmota\"\ntopic = \"t\"\n",
            "devices[0].id",
            "missing",
        ),
    ];
    refused(&cases);
}

#[test]
fn door_contacts_are_named_by_their_doors_and_a_bad_contact_entry_is_named() {
    const LOCK: &str =
        "[[devices]]\nid = \"l\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"l\"\n";
    let ok = parse(&format!(
        "{MINIMAL}\n{LOCK}contact = \"c\"\nheld_open_after = \"2m\"\n\
         [[devices]]\nid = \"c\"\ntype = \"contact\"\ndriver = \"tasmota\"\ntopic = \"board\"\nswitch = 2\nclosed = \"ON\"\n\
         [[devices]]\nid = \"s\"\ntype = \"strike\"\ndriver = \"tasmota\"\ntopic = \"board\"\n"
    ))
    .unwrap();
    assert_eq!(ok.devices[0].contact.as_deref(), Some("c"));
    assert_eq!(ok.devices[0].held_open_after, Duration::from_secs(120));
    assert_eq!(ok.devices[2].held_open_after, Duration::from_secs(60));
    let Some(crate::config::Contact::Tasmota(t)) = ok.devices[1].contact_settings() else {
        panic!("not a Tasmota contact: {:?}", ok.devices[1].settings);
    };
    assert_eq!((t.switch, t.closed), (2, crate::config::OnOff::On));
    // The Tasmota strike keeps its own PulseTime: passage mode cannot hold it, and says so.
    let w = ok.warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("devices[2] `s`: passage mode cannot hold")),
        "{w:?}"
    );
    assert!(!w.iter().any(|w| w.contains("`l`")), "{w:?}");
    let cases = [
        (format!("{LOCK}contact = \"nope\"\n"), "devices[0].contact", "no device `nope`"),
        (
            format!("{LOCK}contact = \"l2\"\n{}", LOCK.replace("\"l\"", "\"l2\"")),
            "devices[0].contact",
            "is a lock, not a contact",
        ),
        (format!("{LOCK}held_open_after = \"1m\"\n"), "devices[0].held_open_after", "needs `contact`"),
        (
            "[[devices]]\nid = \"c\"\ntype = \"contact\"\ndriver = \"tasmota\"\ntopic = \"b\"\n".into(),
            "devices[0].switch",
            "required by driver tasmota for a contact",
        ),
        (
            "[[devices]]\nid = \"c\"\ntype = \"contact\"\ndriver = \"tasmota\"\ntopic = \"b\"\nswitch = 1\nrelay = 1\n".into(),
            "devices[0].relay",
            "not used by driver tasmota for a contact",
        ),
        (
            "[[devices]]\nid = \"c\"\ntype = \"contact\"\ndriver = \"tasmota\"\ntopic = \"b\"\nswitch = 1\nclosed = \"CLOSED\"\n".into(),
            "devices[0].closed",
            "unknown variant",
        ),
        (
            "[[devices]]\nid = \"c\"\ntype = \"contact\"\ndriver = \"homeassistant\"\nstate_topic = \"s\"\nstate_open = \"x\"\nstate_closed = \"X\"\n".into(),
            "devices[0].state_closed",
            "must differ",
        ),
        (
            "[[devices]]\nid = \"c\"\ntype = \"contact\"\ndriver = \"shelly\"\ntopic = \"s\"\npulse = \"1s\"\n".into(),
            "devices[0].type",
            "driver shelly drives strike or lock, not contact",
        ),
        (
            "[[devices]]\nid = \"c\"\ntype = \"contact\"\ndriver = \"zigbee2mqtt\"\ntopic = \"s\"\ncontact = \"c\"\n".into(),
            "devices[0].contact",
            "only a door",
        ),
    ];
    refused(&cases);
}

/// Each `[[devices]]` text after MINIMAL is refused with one line naming `key` and saying `says`.
fn refused(cases: &[(impl AsRef<str>, &str, &str)]) {
    for (devices, key, says) in cases {
        let devices = devices.as_ref();
        let e = parse(&format!("{MINIMAL}\n{devices}")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(says) && !text.contains('\n'),
            "{devices}: {text}"
        );
        assert_eq!(key_of(e), *key, "{devices}");
    }
}
