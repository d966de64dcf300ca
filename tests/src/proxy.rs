//! A TCP proxy a test can cut and heal: stands for the network between one process and the
//! rest of the cluster (the "port cut" of a network-partition test).

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// Forwards every connection on `addr` to a target until cut.
pub struct Proxy {
    /// `127.0.0.1:PORT` the proxy listens on.
    pub addr: String,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
    target: Arc<target::Target>,
    task: tokio::task::JoinHandle<()>,
}

mod target {
    /// Where connections go (set once the target's address is known).
    #[derive(Default)]
    pub struct Target(pub std::sync::Mutex<Option<String>>);

    impl Target {
        pub fn get(&self) -> Option<String> {
            self.0.lock().ok().and_then(|t| t.clone())
        }
    }
}

impl Proxy {
    /// Listens on a free loopback port; forwards once [`Proxy::forward_to`] names a target
    /// (until then connections are dropped).
    pub async fn bind() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let cut = Arc::new(tokio::sync::watch::channel(false).0);
        let target = Arc::new(target::Target::default());
        let (state, to) = (cut.clone(), target.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Cut (or no target yet): the connection is accepted and dropped at once.
                let Some(target) = to.get().filter(|_| !*state.borrow()) else { continue };
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Ok(Self { addr, cut, target, task })
    }

    /// Sends connections to `target` (`host:port`).
    pub fn forward_to(&self, target: &str) {
        if let Ok(mut t) = self.target.0.lock() {
            *t = Some(target.to_owned());
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
