//! Where a provider's requests may go (the SSRF guard). A namespaced `OAuthProvider` is
//! written by a tenant, and the operator sends requests (some carrying an admin credential or
//! a client secret) to whatever URL it names, and to the URLs a server's answers name
//! (discovered endpoints, RFC 7592 `registration_client_uri`). Unless the operator is started
//! with an allow-list (`--provider-allowed-networks`), such requests may reach only public
//! addresses: never loopback, private (cluster-internal), link-local (the cloud metadata
//! service), shared (CGNAT), unique-local or otherwise special ones. A `ClusterOAuthProvider`
//! is written by the cluster's administrators and is not restricted.
//!
//! The check is made on the address actually connected to: a DNS name is resolved by
//! [`GuardedResolver`], which drops every address the policy refuses (so a name that resolves,
//! or re-resolves, to a metadata address is refused too), and a URL whose host is an IP
//! address (which the HTTP client connects to without resolving) is checked by
//! [`EgressPolicy::check_url`] before each request. A restricted client never goes through
//! an HTTP proxy from the environment (`HTTPS_PROXY`, ...): a proxy resolves and connects on
//! its own, out of this check's sight.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The networks a restricted provider may not reach unless the allow-list names them.
const SPECIAL: &[&str] = &[
    "0.0.0.0/8",        // "this" network
    "10.0.0.0/8",       // private
    "100.64.0.0/10",    // shared address space (CGNAT; pod networks; 100.100.100.200 metadata)
    "127.0.0.0/8",      // loopback
    "169.254.0.0/16",   // link-local (169.254.169.254: the cloud metadata service)
    "172.16.0.0/12",    // private
    "192.0.0.0/24",     // IETF protocol assignments
    "192.0.2.0/24",     // documentation
    "192.88.99.0/24",   // 6to4 relay anycast
    "192.168.0.0/16",   // private
    "198.18.0.0/15",    // benchmarking
    "198.51.100.0/24",  // documentation
    "203.0.113.0/24",   // documentation
    "224.0.0.0/4",      // multicast
    "240.0.0.0/4",      // reserved, broadcast
    "168.63.129.16/32", // Azure's WireServer (host agent, in public space)
    "::/96",            // unspecified, loopback, IPv4-compatible (deprecated; embeds IPv4)
    "::ffff:0:0/96",    // IPv4-mapped (checked as IPv4 instead, below)
    "64:ff9b::/96",     // NAT64 (embeds IPv4)
    "64:ff9b:1::/48",   // local NAT64
    "100::/64",         // discard
    "2001::/23",        // IETF protocol assignments (Teredo, ORCHID, ...)
    "2001:db8::/32",    // documentation
    "2002::/16",        // 6to4 (embeds IPv4)
    "fc00::/7",         // unique local (fd00:ec2::254: a metadata service)
    "fe80::/10",        // link-local
    "fec0::/10",        // site-local (deprecated)
    "ff00::/8",         // multicast
];

/// Which addresses a provider's requests may reach.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    /// `false`: anywhere (a `ClusterOAuthProvider`).
    restricted: bool,
    /// Networks a restricted provider may reach even though they are special.
    allowed: Vec<IpNet>,
}

/// A request a restricted provider may not make.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EgressDenied(pub String);

impl EgressPolicy {
    /// No restriction.
    pub fn unrestricted() -> Self {
        Self::default()
    }

    /// Public addresses only, and the networks in `allowed`.
    pub fn restricted(allowed: Vec<IpNet>) -> Self {
        Self {
            restricted: true,
            allowed,
        }
    }

    pub fn is_restricted(&self) -> bool {
        self.restricted
    }

    /// Whether a request may be sent to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if !self.restricted {
            return true;
        }
        // An IPv4-mapped IPv6 address is the IPv4 address it carries.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        !special().iter().any(|n| n.contains(&ip))
    }

    /// Refuses a URL whose host is an IP address the policy does not permit (a DNS name is
    /// checked when it is resolved, by [`GuardedResolver`]).
    pub fn check_url(&self, url: &url::Url) -> Result<(), EgressDenied> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(EgressDenied(denied(ip)))
        }
    }
}

fn special() -> &'static [IpNet] {
    static NETS: std::sync::OnceLock<Vec<IpNet>> = std::sync::OnceLock::new();
    NETS.get_or_init(|| {
        SPECIAL
            .iter()
            .map(|n| n.parse().expect("a valid network literal"))
            .collect()
    })
}

fn denied(ip: IpAddr) -> String {
    format!(
        "{ip} is a loopback, private, link-local or otherwise special address, which a namespaced OAuthProvider \
         may not reach: use a ClusterOAuthProvider, or start the operator with --provider-allowed-networks naming \
         that network"
    )
}

/// Parses `--provider-allowed-networks` (comma-separated CIDRs or single addresses).
pub fn parse_networks(value: &str) -> Result<Vec<IpNet>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("{s:?} is not a network (CIDR, e.g. 10.20.0.0/16) or an address")
                })
        })
        .collect()
}

/// A DNS resolver that answers only with addresses the policy permits, so that what is
/// connected to is what was checked (no gap between a check and a second resolution).
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (permitted, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| policy.permits(a.ip()));
            if permitted.is_empty() && !refused.is_empty() {
                // The address is not named: a tenant could otherwise map internal DNS.
                return Err(Box::new(EgressDenied(format!(
                    "{host} resolves only to loopback, private, link-local or otherwise special addresses, which a \
                     namespaced OAuthProvider may not reach: use a ClusterOAuthProvider, or start the operator with \
                     --provider-allowed-networks naming that network"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`EgressDenied`] somewhere in an error's chain of causes (a refused resolution surfaces
/// as a connect error of the HTTP client).
pub fn denial_in(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(denied) = e.downcast_ref::<EgressDenied>() {
            return Some(denied.0.clone());
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restricted(allowed: &str) -> EgressPolicy {
        EgressPolicy::restricted(parse_networks(allowed).unwrap())
    }

    #[test]
    fn special_addresses_are_refused_unless_allowed() {
        let policy = restricted("");
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.96.0.1",
            "172.20.1.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::a9fe:a9fe",
            "::7f00:1",
            "fec0::1",
            "168.63.129.16",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!policy.permits(ip), "{ip} is refused");
            assert!(
                EgressPolicy::unrestricted().permits(ip),
                "{ip} unrestricted"
            );
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(policy.permits(ip), "{ip} is public");
        }
    }

    #[test]
    fn the_allow_list_opens_only_what_it_names() {
        let policy = restricted("127.0.0.1, 10.20.0.0/16");
        assert!(policy.permits("127.0.0.1".parse().unwrap()));
        assert!(policy.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(policy.permits("10.20.3.4".parse().unwrap()));
        assert!(!policy.permits("127.0.0.2".parse().unwrap()));
        assert!(!policy.permits("10.21.0.1".parse().unwrap()));
        assert!(!policy.permits("169.254.169.254".parse().unwrap()));
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("example.com").is_err());
        assert_eq!(parse_networks(" ,").unwrap(), Vec::<IpNet>::new());
    }

    #[test]
    fn ip_literal_urls_are_checked_names_are_left_to_the_resolver() {
        let policy = restricted("");
        let check = |u: &str| policy.check_url(&url::Url::parse(u).unwrap());
        let refused = check("http://169.254.169.254/latest/meta-data").unwrap_err();
        assert!(
            refused.0.contains("--provider-allowed-networks"),
            "{refused}"
        );
        assert!(check("http://[::1]:4445/admin").is_err());
        assert!(check("http://[::ffff:7f00:1]/").is_err());
        assert!(check("https://8.8.8.8/").is_ok());
        assert!(check("https://idp.example.com/").is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_refused() {
        use reqwest::dns::Resolve;
        let name = |n: &str| n.parse::<reqwest::dns::Name>().unwrap();
        let guarded = GuardedResolver::new(Arc::new(restricted("")));
        let err = match guarded.resolve(name("localhost")).await {
            Ok(_) => panic!("localhost is loopback"),
            Err(e) => e,
        };
        let reason = denial_in(err.as_ref()).expect("a denial");
        assert!(reason.starts_with("localhost resolves only to"), "{reason}");
        assert!(
            !reason.contains("127.0.0.1") && !reason.contains("::1"),
            "the resolved address is not told: {reason}"
        );
        let allowed = GuardedResolver::new(Arc::new(restricted("127.0.0.0/8, ::1")));
        let addrs: Vec<SocketAddr> = match allowed.resolve(name("localhost")).await {
            Ok(a) => a.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
