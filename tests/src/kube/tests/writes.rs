//! Creates and updates (generation, system metadata), field ownership, apply conflicts and forced
//! takeover.

use super::*;

#[tokio::test]
async fn create_update_generation_and_metadata() {
    let server = server(true);
    let c = client(&server).await;
    let pay = api(&c, "pay");
    let o = pay
        .patch("deny-cart", &pp(), &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
        .await
        .unwrap();
    assert_eq!(server.requests().last().unwrap().status, 201);
    assert_eq!(o.metadata.generation, Some(1));
    assert!(o.metadata.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(o.metadata.creation_timestamp.is_some());
    let rv1 = o.metadata.resource_version.clone().unwrap();
    let mf = &o.metadata.managed_fields.as_ref().unwrap()[0];
    assert_eq!(mf.manager.as_deref(), Some("verity"));
    assert_eq!(mf.operation.as_deref(), Some("Apply"));
    assert_eq!(mf.fields_type.as_deref(), Some("FieldsV1"));
    let fields = serde_json::to_value(mf.fields_v1.as_ref().unwrap()).unwrap();
    assert_eq!(
        fields,
        json!({"f:metadata": {"f:labels": {"f:app.kubernetes.io/managed-by": {}}},
            "f:spec": {"f:action": {}, "f:rules": {}}})
    );
    assert!(server.first_seen("pay", "deny-cart").is_some());

    // The same again: nothing changes, not even the resourceVersion.
    let o = pay
        .patch("deny-cart", &pp(), &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
        .await
        .unwrap();
    assert_eq!(server.requests().last().unwrap().status, 200);
    assert_eq!(
        (o.metadata.generation, o.metadata.resource_version.as_deref()),
        (Some(1), Some(rv1.as_str()))
    );

    // A label only: a new resourceVersion, the same generation.
    let mut labelled = policy("pay", "deny-cart", "DENY");
    labelled["metadata"]["labels"]["verity.dev/revocation"] = json!("r-1");
    let o = pay.patch("deny-cart", &pp(), &Patch::Apply(&labelled)).await.unwrap();
    assert_eq!(o.metadata.generation, Some(1));
    assert_ne!(o.metadata.resource_version.as_deref(), Some(rv1.as_str()));
    // The spec: generation 2; the label it no longer sends is gone.
    let mut other = policy("pay", "deny-cart", "DENY");
    other["spec"]["rules"][0]["from"][0]["source"]["principals"] =
        json!(["cluster.local/ns/shop/sa/cart", "cluster.local/ns/shop/sa/web"]);
    let o = pay.patch("deny-cart", &pp(), &Patch::Apply(&other)).await.unwrap();
    assert_eq!(o.metadata.generation, Some(2));
    assert!(!o.labels().contains_key("verity.dev/revocation"));
    let live = server.get("pay", "deny-cart").unwrap();
    assert_eq!(
        live["spec"]["rules"][0]["from"][0]["source"]["principals"][1],
        "cluster.local/ns/shop/sa/web"
    );
    assert_eq!(live["apiVersion"], "security.istio.io/v1");
    // Served as v1beta1 too.
    let beta: Api<DynamicObject> = Api::namespaced_with(c.clone(), "pay", &ar("v1beta1"));
    let o = beta.get("deny-cart").await.unwrap();
    assert_eq!(o.types.unwrap().api_version, "security.istio.io/v1beta1");
    // Discovery.
    let v = c.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    let (code, _, list) = raw(&c, "GET", "/apis/security.istio.io/v1", None, "").await;
    assert_eq!((code, list["resources"][0]["name"].as_str()), (200, Some(PLURAL)));
}

#[tokio::test]
async fn conflicts_and_forced_takeover() {
    let server = server(true);
    let c = client(&server).await;
    let pay = api(&c, "pay");
    pay.patch("deny-cart", &pp(), &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
        .await
        .unwrap();
    let err = server
        .apply_as("kubectl", &policy("pay", "deny-cart", "ALLOW"), false)
        .unwrap_err();
    assert_eq!(err["code"], 409);
    assert_eq!(err["reason"], "Conflict");
    assert_eq!(
        err["message"],
        "Apply failed with 1 conflict: conflict with \"verity\": .spec.action"
    );
    assert_eq!(
        err["details"]["causes"],
        json!([{"reason": "FieldManagerConflict", "message": "conflict with \"verity\"", "field": ".spec.action"}])
    );
    // Forced, kubectl takes the action; the rules it sends with the same value are shared.
    server
        .apply_as("kubectl", &policy("pay", "deny-cart", "ALLOW"), true)
        .unwrap();
    let live = server.get("pay", "deny-cart").unwrap();
    assert_eq!(live["spec"]["action"], "ALLOW");
    let owned = |live: &Value, manager: &str| -> Value {
        live["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == manager)
            .map(|e| e["fieldsV1"]["f:spec"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(owned(&live, "kubectl"), json!({"f:action": {}, "f:rules": {}}));
    assert_eq!(owned(&live, "verity"), json!({"f:rules": {}}));

    // Verity without force now conflicts with kubectl; with force it takes the field back.
    let e = api_status(
        pay.patch(
            "deny-cart",
            &PatchParams::apply("verity"),
            &Patch::Apply(&policy("pay", "deny-cart", "DENY")),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.action"
    );
    let cause = &e.details.unwrap().causes[0];
    assert_eq!(
        (cause.reason.as_str(), cause.field.as_str()),
        ("FieldManagerConflict", ".spec.action")
    );
    let o = pay
        .patch("deny-cart", &pp(), &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["action"], "DENY");
    assert_eq!(o.metadata.generation, Some(3));

    // An Update (kubectl edit) never conflicts and takes what it changes.
    server
        .update_as(
            "kubectl-edit",
            "pay",
            "deny-cart",
            &json!({"spec": {"action": "AUDIT"}}),
        )
        .unwrap();
    let e = api_status(
        pay.patch(
            "deny-cart",
            &PatchParams::apply("verity"),
            &Patch::Apply(&policy("pay", "deny-cart", "DENY")),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using security.istio.io/v1: .spec.action"
    );
    // Two fields: the apiserver's multi-conflict message.
    let mut both = policy("pay", "deny-cart", "CUSTOM");
    both["spec"]["rules"] = json!([]);
    let err = server.apply_as("other", &both, false).unwrap_err();
    assert_eq!(
        err["message"],
        "Apply failed with 3 conflicts: conflicts with \"kubectl\":\n- .spec.rules\nconflicts with \"kubectl-edit\" using security.istio.io/v1:\n- .spec.action\nconflicts with \"verity\":\n- .spec.rules"
    );
    // A merge patch through HTTP is an Update too.
    let o = pay
        .patch(
            "deny-cart",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"note": "x"}}})),
        )
        .await
        .unwrap();
    assert_eq!(o.annotations().get("note").map(String::as_str), Some("x"));
    let updaters: Vec<String> = o
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter(|e| e.operation.as_deref() == Some("Update"))
        .filter_map(|e| e.manager.clone())
        .collect();
    assert_eq!(updaters.len(), 2, "{updaters:?}");
    // Applying without the label verity sent before removes it unless someone else owns it.
    let mut unlabelled = policy("pay", "deny-cart", "DENY");
    unlabelled["metadata"]["labels"] = json!({});
    let o = pay.patch("deny-cart", &pp(), &Patch::Apply(&unlabelled)).await.unwrap();
    assert!(
        o.labels().contains_key("app.kubernetes.io/managed-by"),
        "kubectl still owns it"
    );
}
