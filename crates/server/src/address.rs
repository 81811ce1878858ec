//! The address table of design.md: every host form is rewritten to its path form before routing, so the
//! router (and its authorization) knows one form only.
//!
//! | host form                                   | path form                                    |
//! |---------------------------------------------|----------------------------------------------|
//! | `<env>.<apps>` + `/rest/v1` etc.            | `/env/<env>/rest/v1…`                        |
//! | `<env>.<apps>` + anything else              | `/env/<env>/site/…`                          |
//! | `<deployment>--<env>.<apps>` + `/rest/v1` etc. | `/env/<env>/rest/v1…`                     |
//! | `<deployment>--<env>.<apps>` + anything else | `/env/<env>/deployments/<deployment>/…`     |
//! | `<app>--<env>.<apps>`                       | `/env/<env>/apps/<app>/…`                    |
//! | `<port>-<sandbox>--<env>.<apps>`            | `/env/<env>/sandboxes/<sandbox>/ports/<port>/…` |
//! | a verified custom domain of `<env>`         | as `<env>.<apps>` (`crate::rewrite_custom_domain`) |

use protocol::EnvId;

/// Env API prefixes served on a site's own origin, so deployed apps need no CORS.
pub const SAME_ORIGIN_API_PREFIXES: [&str; 4] = ["/rest/v1", "/auth/v1", "/storage/v1", "/functions/v1"];

/// Deployment ids: `dpl` and 10 lowercase letters or digits. Container app names may not take this shape,
/// which keeps `<x>--<env>` unambiguous.
pub fn is_deployment_id(label: &str) -> bool {
    hosting::path::is_deployment_id(label)
}

/// What a host under the apps domain names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTarget {
    /// `<env>.<apps>`: the published site and the env's APIs.
    Env(EnvId),
    Deployment {
        env: EnvId,
        deployment: String,
    },
    App {
        env: EnvId,
        app: String,
    },
    SandboxPort {
        env: EnvId,
        sandbox: String,
        port: u16,
    },
}

/// Parses a `Host` header value against the apps domain. `None` = not an apps-domain host (the
/// platform's own address), which is routed as is.
pub fn parse_host(host: &str, apps_domain: &str) -> Option<HostTarget> {
    let host = strip_port(host).to_ascii_lowercase();
    let label = host.strip_suffix(apps_domain)?.strip_suffix('.')?;
    if label.contains('.') {
        return None;
    }
    let Some((first, env)) = label.split_once("--") else {
        return EnvId::parse(label).ok().map(HostTarget::Env);
    };
    let env = EnvId::parse(env).ok()?;
    if let Some((port, sandbox)) = first.split_once('-')
        && let Ok(port) = port.parse::<u16>()
        && port > 0
        && !port.to_string().starts_with('0')
        && protocol::ids::validate_label(sandbox, 63).is_ok()
    {
        return Some(HostTarget::SandboxPort { env, sandbox: sandbox.to_owned(), port });
    }
    protocol::ids::validate_label(first, 63).ok()?;
    if is_deployment_id(first) {
        Some(HostTarget::Deployment { env, deployment: first.to_owned() })
    } else {
        Some(HostTarget::App { env, app: first.to_owned() })
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The path form of `path_and_query` on `target`.
pub fn path_form(target: &HostTarget, path_and_query: &str) -> String {
    let path = if path_and_query.starts_with('/') { path_and_query.to_owned() } else { format!("/{path_and_query}") };
    let is_api = || {
        SAME_ORIGIN_API_PREFIXES
            .iter()
            .any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?'])))
    };
    match target {
        HostTarget::Env(env) if is_api() => format!("/env/{env}{path}"),
        HostTarget::Env(env) => format!("/env/{env}/site{path}"),
        // A preview runs the same app as the published site, so it reaches the env's APIs the same way.
        HostTarget::Deployment { env, .. } if is_api() => format!("/env/{env}{path}"),
        HostTarget::Deployment { env, deployment } => format!("/env/{env}/deployments/{deployment}{path}"),
        HostTarget::App { env, app } => format!("/env/{env}/apps/{app}{path}"),
        HostTarget::SandboxPort { env, sandbox, port } => format!("/env/{env}/sandboxes/{sandbox}/ports/{port}{path}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn env(s: &str) -> EnvId {
        EnvId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_host_form_maps_to_its_path_form() {
        let d = "apps.example.com";
        let cases = [
            ("shop.apps.example.com", "/", "/env/shop/site/"),
            ("shop.apps.example.com:8443", "/about?x=1", "/env/shop/site/about?x=1"),
            ("shop.apps.example.com", "/rest/v1/todos?select=*", "/env/shop/rest/v1/todos?select=*"),
            ("shop.apps.example.com", "/auth/v1/token", "/env/shop/auth/v1/token"),
            ("shop.apps.example.com", "/storage/v1/object/a", "/env/shop/storage/v1/object/a"),
            ("shop.apps.example.com", "/functions/v1/hello", "/env/shop/functions/v1/hello"),
            ("shop.apps.example.com", "/rest/v1x", "/env/shop/site/rest/v1x"),
            ("dpl0123456789--shop.apps.example.com", "/index.html", "/env/shop/deployments/dpl0123456789/index.html"),
            ("dpl0123456789--shop.apps.example.com", "/auth/v1/token", "/env/shop/auth/v1/token"),
            ("dpl0123456789--shop.apps.example.com", "/rest/v1/todos", "/env/shop/rest/v1/todos"),
            ("dpl0123456789--shop.apps.example.com", "/rest/v1x", "/env/shop/deployments/dpl0123456789/rest/v1x"),
            ("api--shop.apps.example.com", "/", "/env/shop/apps/api/"),
            ("5173-sbx1--shop.apps.example.com", "/src/main.ts", "/env/shop/sandboxes/sbx1/ports/5173/src/main.ts"),
        ];
        for (host, path, want) in cases {
            let target = parse_host(host, d).unwrap_or_else(|| panic!("{host}"));
            assert_eq!(path_form(&target, path), want, "{host}{path}");
        }
        assert_eq!(parse_host("SHOP.Apps.Example.com", d), Some(HostTarget::Env(env("shop"))));
    }

    proptest::proptest! {
        /// Host headers are untrusted: parsing never panics, and whatever env it finds is a valid id
        /// whose path form stays under that env's prefix.
        #[test]
        fn host_parsing_never_panics_and_stays_in_its_env(host in "\\PC{0,60}", path in "/[a-z0-9/._-]{0,20}") {
            if let Some(target) = parse_host(&host, "localhost") {
                let env = match &target {
                    HostTarget::Env(e) => e.clone(),
                    HostTarget::Deployment { env, .. } | HostTarget::App { env, .. } | HostTarget::SandboxPort { env, .. } => env.clone(),
                };
                proptest::prop_assert!(EnvId::parse(env.as_str()).is_ok());
                let prefix = format!("/env/{env}/");
                proptest::prop_assert!(path_form(&target, &path).starts_with(&prefix));
            }
        }

        #[test]
        fn generated_env_hosts_round_trip(env in "[a-z]([a-z0-9]|-[a-z0-9]){0,14}") {
            let host = format!("{env}.apps.example.com:8443");
            proptest::prop_assert_eq!(parse_host(&host, "apps.example.com"), Some(HostTarget::Env(EnvId::parse(&env).unwrap())));
        }
    }

    #[test]
    fn other_hosts_and_bad_labels_are_not_rewritten() {
        let d = "localhost";
        for host in [
            "localhost",
            "127.0.0.1:8787",
            "a.b.localhost",
            "x--.localhost",
            "--x.localhost",
            "a---b.localhost",
            "Bad_Env.localhost",
            "evillocalhost",
            "[::1]:8787",
        ] {
            assert_eq!(parse_host(host, d), None, "{host}");
        }
    }
}
