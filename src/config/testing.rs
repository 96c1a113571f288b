//! Configs for the machines' unit tests.

/// The controller and ZenCore sections every unit-test config shares (room `ms`).
pub const HEAD: &str = r#"
[controller]
id = "edge-1"
organization_id = "org"
meeting_space_id = "ms"
[zencore]
webhook_url = "http://127.0.0.1:9/hook"
secret = "s-s-s-s-s-s-s-s-s-s-s-s-s"
"#;

/// [`HEAD`], then `sections`.
pub fn parse(sections: &str) -> super::Config {
    let text = format!("{HEAD}{sections}");
    super::Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap()
}
