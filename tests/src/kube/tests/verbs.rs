//! GET, LIST and DELETE; dry runs, the options checks and the shape of requests.

use super::*;

#[tokio::test]
async fn get_list_delete() {
    let server = server(true);
    let c = client(&server).await;
    let pay = api(&c, "pay");
    let e = api_status(pay.get("nothing").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        e.message,
        "authorizationpolicies.security.istio.io \"nothing\" not found"
    );
    let d = e.details.unwrap();
    assert_eq!(
        (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
        ("nothing", GROUP, PLURAL)
    );
    assert_eq!(
        api_status(pay.delete("nothing", &DeleteParams::default()).await.unwrap_err()).code,
        404
    );

    for (ns, name) in [("pay", "a"), ("shop", "b"), ("istio-system", "c")] {
        api(&c, ns)
            .patch(name, &pp(), &Patch::Apply(&policy(ns, name, "DENY")))
            .await
            .unwrap();
    }
    let mut foreign = policy("pay", "foreign", "ALLOW");
    foreign["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "someone", "tier": "2"});
    pay.patch("foreign", &PatchParams::apply("someone"), &Patch::Apply(&foreign))
        .await
        .unwrap();

    let all: Api<DynamicObject> = Api::all_with(c.clone(), &ar("v1"));
    let names = |l: kube::core::ObjectList<DynamicObject>| -> Vec<String> {
        l.items.into_iter().map(|o| o.metadata.name.unwrap()).collect()
    };
    assert_eq!(
        names(all.list(&ListParams::default().labels(MANAGED)).await.unwrap()),
        ["c", "a", "b"]
    );
    assert_eq!(
        names(pay.list(&ListParams::default().labels(MANAGED)).await.unwrap()),
        ["a"]
    );
    assert_eq!(names(pay.list(&ListParams::default()).await.unwrap()), ["a", "foreign"]);
    for (selector, want) in [
        ("app.kubernetes.io/managed-by in (verity, x)", vec!["c", "a", "b"]),
        ("app.kubernetes.io/managed-by notin (verity)", vec!["foreign"]),
        ("app.kubernetes.io/managed-by!=verity", vec!["foreign"]),
        ("app.kubernetes.io/managed-by==someone,tier", vec!["foreign"]),
        ("!tier", vec!["c", "a", "b"]),
        ("tier>1", vec!["foreign"]),
    ] {
        assert_eq!(
            names(all.list(&ListParams::default().labels(selector)).await.unwrap()),
            want,
            "{selector}"
        );
    }
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.namespace=shop"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    let l = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(l.metadata.resource_version, Some(server.resource_version().to_string()));
    assert_eq!(l.items[0].types.as_ref().unwrap().kind, KIND);
    for bad in ["a b c", "x in (a", "=x", "tier>one"] {
        let e = api_status(all.list(&ListParams::default().labels(bad)).await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"), "{bad}");
    }
    assert_eq!(
        api_status(
            all.list(&ListParams::default().fields("spec.action=DENY"))
                .await
                .unwrap_err()
        )
        .code,
        400
    );
    // A namespace that does not exist holds nothing, as on a real cluster.
    let nowhere = api(&c, "nowhere");
    assert!(nowhere.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert_eq!(api_status(nowhere.get("a").await.unwrap_err()).code, 404);

    // Dry-run delete (DeleteOptions in the body, as kube-rs sends it) keeps the object.
    let dry = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    let gone = pay.delete("a", &dry).await.unwrap().left().unwrap();
    assert_eq!(gone.metadata.name.as_deref(), Some("a"));
    assert!(server.get("pay", "a").is_some());
    let gone = pay.delete("a", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert_eq!(gone.data["spec"]["action"], "DENY");
    assert!(server.get("pay", "a").is_none() && server.first_seen("pay", "a").is_none());
    assert_eq!(api_status(pay.get("a").await.unwrap_err()).code, 404);
    assert!(server.delete_as_admin("shop", "b"));
    assert!(!server.delete_as_admin("shop", "b"));
    assert_eq!(
        names(all.list(&ListParams::default().labels(MANAGED)).await.unwrap()),
        ["c"]
    );
}

#[tokio::test]
async fn dry_run_options_and_request_shape() {
    let server = server(true);
    let c = client(&server).await;
    let pay = api(&c, "pay");
    let rv = server.resource_version();
    let o = pay
        .patch("dry", &pp().dry_run(), &Patch::Apply(&policy("pay", "dry", "DENY")))
        .await
        .unwrap();
    assert_eq!(o.metadata.name.as_deref(), Some("dry"));
    assert!(server.get("pay", "dry").is_none() && server.objects().is_empty());
    assert_eq!(server.resource_version(), rv);

    let path = "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies/x";
    let body = policy("pay", "x", "DENY").to_string();
    let (code, _, s) = raw(&c, "PATCH", path, Some(APPLY_PATCH), &body).await;
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        s["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
    let (code, _, s) = raw(
        &c,
        "PATCH",
        &format!("{path}?fieldManager=m&dryRun=Some"),
        Some(APPLY_PATCH),
        &body,
    )
    .await;
    assert_eq!(code, 422, "{s}");
    let (code, _, s) = raw(
        &c,
        "PATCH",
        &format!("{path}?fieldManager=m"),
        Some("application/strategic-merge-patch+json"),
        "{}",
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (415, Some("UnsupportedMediaType")));
    let (code, _, _) = raw(&c, "PATCH", &format!("{path}?fieldManager=m"), Some(MERGE_PATCH), "{}").await;
    assert_eq!(code, 404);
    let (code, _, s) = raw(
        &c,
        "PATCH",
        &format!("{path}?fieldManager=m&force=true"),
        Some(MERGE_PATCH),
        "{}",
    )
    .await;
    assert_eq!(
        (code, s["message"].as_str()),
        (
            422,
            Some(
                "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch"
            )
        )
    );
    // The body against the URL.
    let named = policy("pay", "other", "DENY").to_string();
    let (code, _, s) = raw(
        &c,
        "PATCH",
        &format!("{path}?fieldManager=m"),
        Some(APPLY_PATCH),
        &named,
    )
    .await;
    assert_eq!(
        (code, s["message"].as_str()),
        (
            400,
            Some("the name of the object (other) does not match the name on the URL (x)")
        )
    );
    let mut beta = policy("pay", "x", "DENY");
    beta["apiVersion"] = json!("security.istio.io/v1beta1");
    let (code, _, s) = raw(
        &c,
        "PATCH",
        &format!("{path}?fieldManager=m"),
        Some(APPLY_PATCH),
        &beta.to_string(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    let mut with_mf = policy("pay", "x", "DENY");
    with_mf["metadata"]["managedFields"] = json!([]);
    let (code, _, s) = raw(
        &c,
        "PATCH",
        &format!("{path}?fieldManager=m"),
        Some(APPLY_PATCH),
        &with_mf.to_string(),
    )
    .await;
    assert_eq!(
        (code, s["message"].as_str()),
        (400, Some("metadata.managedFields must be nil"))
    );
    // YAML works as well as JSON.
    let yaml =
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: x\nspec:\n  action: DENY\n";
    let (code, _, s) = raw(&c, "PATCH", &format!("{path}?fieldManager=m"), Some(APPLY_PATCH), yaml).await;
    assert_eq!((code, s["metadata"]["namespace"].as_str()), (201, Some("pay")));
    // A JSON patch, and a resourceVersion precondition.
    let jp = r#"[{"op":"test","path":"/spec/action","value":"DENY"},{"op":"replace","path":"/spec/action","value":"AUDIT"}]"#;
    let (code, _, s) = raw(&c, "PATCH", path, Some(JSON_PATCH), jp).await;
    assert_eq!((code, s["spec"]["action"].as_str()), (200, Some("AUDIT")));
    let (code, _, _) = raw(&c, "PATCH", path, Some(JSON_PATCH), jp).await;
    assert_eq!(code, 422, "the test op fails now");
    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"action": "DENY"}}).to_string();
    let (code, _, s) = raw(&c, "PATCH", path, Some(MERGE_PATCH), &stale).await;
    assert_eq!((code, s["reason"].as_str()), (409, Some("Conflict")));

    // Creating in a namespace that does not exist.
    let nowhere = api(&c, "nowhere");
    let e = api_status(
        nowhere
            .patch("x", &pp(), &Patch::Apply(&policy("nowhere", "x", "DENY")))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.message.as_str()), (404, "namespaces \"nowhere\" not found"));
    server.add_namespace("nowhere");
    nowhere
        .patch("x", &pp(), &Patch::Apply(&policy("nowhere", "x", "DENY")))
        .await
        .unwrap();
    // POST and PUT.
    let create = policy("pay", "posted", "DENY").to_string();
    let (code, _, _) = raw(
        &c,
        "POST",
        "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies",
        Some("application/json"),
        &create,
    )
    .await;
    assert_eq!(code, 201);
    let (code, _, s) = raw(
        &c,
        "POST",
        "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies",
        Some("application/json"),
        &create,
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (409, Some("AlreadyExists")));
    // Paths and methods it does not serve.
    let (code, _, s) = raw(&c, "GET", "/apis/networking.istio.io/v1/virtualservices", None, "").await;
    assert_eq!(
        (code, s["message"].as_str()),
        (404, Some("the server could not find the requested resource"))
    );
    let (code, _, s) = raw(&c, "POST", path, Some("application/json"), &body).await;
    assert_eq!((code, s["reason"].as_str()), (405, Some("MethodNotAllowed")));
}
