//! Zeroconf (mDNS) announcement of the bridge, the way Home Assistant discovers Wyoming
//! services: `NAME._wyoming._tcp.local.` at this machine's address and the bridge's port, the
//! record the `wyoming` package's own servers announce with `--zeroconf`.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use anyhow::{bail, Context};
use mdns_sd::{ServiceDaemon, ServiceInfo};

/// The service type Home Assistant's Wyoming integration browses for.
const SERVICE_TYPE: &str = "_wyoming._tcp.local.";

/// An announcement that lasts while this value lives (the daemon answers queries on a thread
/// of its own); dropping it says goodbye.
pub struct Announcement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

/// Announces the bridge listening at `listening` as `name`.
pub fn announce(name: &str, listening: SocketAddr) -> anyhow::Result<Announcement> {
    let ip = match listening.ip() {
        ip if ip.is_loopback() => bail!(
            "--zeroconf announces the service to other machines, but --uri listens on \
             {listening}, which only this machine reaches: listen on tcp://0.0.0.0:{}",
            listening.port()
        ),
        ip if ip.is_unspecified() => outward_address()?,
        ip => ip,
    };
    let daemon = ServiceDaemon::new().context("cannot start the mDNS responder")?;
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        name,
        &format!("{name}.local."),
        ip,
        listening.port(),
        None,
    )
    .with_context(|| format!("'{name}' cannot be announced over mDNS"))?;
    let fullname = info.get_fullname().to_string();
    daemon
        .register(info)
        .context("cannot announce the service over mDNS")?;
    tracing::info!("announced {fullname} at {ip}:{}", listening.port());
    Ok(Announcement { daemon, fullname })
}

/// The address other machines reach this one at: the one its route to the mDNS group leaves
/// from (as the `wyoming` package finds it). Nothing is sent.
fn outward_address() -> anyhow::Result<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket
        .connect("224.0.0.251:5353")
        .and_then(|()| socket.local_addr())
        .map(|a| a.ip())
        .context("this machine has no network route for mDNS; give --uri a specific address")
}
