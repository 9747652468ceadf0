//! Authentication, RBAC refusals, injected faults and outages.

use super::*;

#[tokio::test]
async fn auth_faults_and_outages() {
    let server = server(false);
    let c = client(&server).await;
    let pay = api(&c, "pay");
    // A wrong token.
    let mut cfg = kube::Config::new(server.url().parse().unwrap());
    cfg.root_cert = Some(vec![
        rustls::pki_types::pem::PemObject::from_pem_slice(server.ca_pem().as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'_>| c.to_vec())
            .unwrap(),
    ]);
    cfg.auth_info.token = Some("wrong".to_string().into());
    let stranger = api(&kube::Client::try_from(cfg).unwrap(), "pay");
    let e = api_status(stranger.get("x").await.unwrap_err());
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (401, "Unauthorized", "Unauthorized")
    );

    // RBAC.
    server.set_forbidden(true);
    let e = api_status(
        pay.patch("x", &pp(), &Patch::Apply(&policy("pay", "x", "DENY")))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "authorizationpolicies.security.istio.io \"x\" is forbidden: User \"system:serviceaccount:verity:verity\" cannot patch resource \"authorizationpolicies\" in API group \"security.istio.io\" in the namespace \"pay\""
    );
    let all: Api<DynamicObject> = Api::all_with(c.clone(), &ar("v1"));
    let e = api_status(all.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        e.message,
        "authorizationpolicies.security.istio.io is forbidden: User \"system:serviceaccount:verity:verity\" cannot list resource \"authorizationpolicies\" in API group \"security.istio.io\" at the cluster scope"
    );
    server.set_forbidden(false);

    // 503 and 429 with Retry-After, as a client without retries sees them.
    let bare = client_without_retries(&server).await;
    server.fail_next(&[503]);
    let (code, headers, s) = raw(
        &bare,
        "GET",
        "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies",
        None,
        "",
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str(), s["message"].as_str()),
        (503, Some("ServiceUnavailable"), Some("storage is (re)initializing"))
    );
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    server.fail_next(&[429]);
    let e = api_status(api(&bare, "pay").get("x").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (429, "TooManyRequests"));
    // kube-rs retries 503 itself after the Retry-After second: the 503, then the real answer.
    server.fail_next(&[503]);
    assert_eq!(api_status(pay.get("x").await.unwrap_err()).code, 404);
    let statuses: Vec<u16> = server.requests().iter().rev().take(2).map(|r| r.status).collect();
    assert_eq!(statuses, [404, 503]);
    server.fail_next(&[500, 409, 403]);
    for want in [500, 409, 403] {
        assert_eq!(api_status(pay.get("x").await.unwrap_err()).code, want);
    }
    assert_eq!(api_status(pay.get("x").await.unwrap_err()).code, 404);
    // Discovery never takes a fault.
    server.fail_next(&[500]);
    c.apiserver_version().await.unwrap();
    assert_eq!(api_status(pay.get("x").await.unwrap_err()).code, 500);
    // Rejections hold every 4xx.
    assert!(server.rejections().iter().any(|r| r.status["code"] == 401));

    // Slow answers.
    server.set_response_delay(Duration::from_millis(300));
    let t = Instant::now();
    let _ = pay.get("x").await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    server.set_response_delay(Duration::ZERO);

    // Down: connections are refused; up again on the same port.
    server.set_down(true);
    assert!(std::net::TcpStream::connect(server.addr()).is_err());
    match pay.get("x").await {
        Err(kube::Error::Api(s)) => panic!("answered while down: {s:?}"),
        Err(_) => {}
        Ok(o) => panic!("answered while down: {o:?}"),
    }
    server.set_down(false);
    pay.patch("x", &pp(), &Patch::Apply(&policy("pay", "x", "DENY")))
        .await
        .unwrap();
    // wait_for sees changes made by other threads.
    // (Its own client: this runtime is blocked in wait_for meanwhile.)
    let cfg = config(&server).await;
    let waiter = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let c = kube::Client::try_from(cfg).unwrap();
            api(&c, "pay").delete("x", &DeleteParams::default()).await.unwrap();
        });
    });
    assert!(server.wait_for(Duration::from_secs(10), |s| s.get("pay", "x").is_none()));
    waiter.join().unwrap();
}
