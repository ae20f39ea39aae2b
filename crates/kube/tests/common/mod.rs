//! What the kube tests share: a kube-rs client of the in-test API server.

use sluice_e2e::fake_apiserver::FakeApiServer;

/// A client of `server`, as `sluice control --kube` makes one from a kubeconfig.
pub async fn client(server: &FakeApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}
