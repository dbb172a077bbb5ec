//! The Redfish resources of a supervised chassis, as documents: pure functions from what the
//! supervisor reports (`monarch status`'s body) to the JSON a Redfish client reads.
//!
//! The resource tree:
//!
//! ```text
//! /redfish/v1/                              ServiceRoot
//!   Systems/{processor}                     ComputerSystem (one per secondary), Reset action
//!     LogServices/Log/Entries/{n}           its reboot causes and the boot's events
//!   Chassis/{chassis}                       Chassis, main power, Reset action
//!   Managers/{management processor}         Manager (the monarch and its serfs)
//!     LogServices/Log/Entries/{n}           the chassis-wide events (election, power)
//!   SessionService/Sessions/{n}             Session (log in with POST)
//!   EventService                            Server-Sent Events at EventService/SSE
//!   $metadata, odata                        the schemas and entry points used
//! ```

use serde_json::{Value, json};

/// The root of every resource.
pub const ROOT: &str = "/redfish/v1";

/// The schema versions the service speaks (DSP8010 2025.4): `$metadata` references these and
/// every `@odata.type` uses them.
pub const SCHEMAS: &[(&str, &str)] = &[
    ("ServiceRoot", "v1_20_0"),
    ("ComputerSystemCollection", ""),
    ("ComputerSystem", "v1_27_0"),
    ("ChassisCollection", ""),
    ("Chassis", "v1_28_0"),
    ("ManagerCollection", ""),
    ("Manager", "v1_24_0"),
    ("LogServiceCollection", ""),
    ("LogService", "v1_9_0"),
    ("LogEntryCollection", ""),
    ("LogEntry", "v1_21_0"),
    ("SessionService", "v1_2_0"),
    ("SessionCollection", ""),
    ("Session", "v1_8_0"),
    ("EventService", "v1_12_0"),
    ("EventDestinationCollection", ""),
    ("EventDestination", "v1_16_0"),
    ("Event", "v1_13_0"),
    ("Message", "v1_3_0"),
    ("Resource", "v1_23_0"),
];

/// `#Schema.vX_Y_Z.Schema`, or `#Schema.Schema` for a collection.
pub fn odata_type(schema: &str) -> String {
    match SCHEMAS.iter().find(|(s, _)| *s == schema) {
        Some((_, v)) if !v.is_empty() => format!("#{schema}.{v}.{schema}"),
        _ => format!("#{schema}.{schema}"),
    }
}

/// A link: `{"@odata.id": path}`.
pub fn link(path: &str) -> Value {
    json!({ "@odata.id": path })
}

/// What the documents name: fixed for the life of the service.
#[derive(Debug, Clone)]
pub struct Info {
    /// The chassis's name, as the topology gives it.
    pub chassis: String,
    /// The chassis's id in paths.
    pub chassis_id: String,
    /// The service's UUID (stable for a chassis name).
    pub uuid: String,
    /// The secondaries' ids, in file order.
    pub systems: Vec<String>,
    /// The management processors' ids (the monarch among them).
    pub managers: Vec<String>,
    /// The monarch's id.
    pub monarch: String,
}

/// The service root: readable without credentials.
pub fn service_root(info: &Info) -> Value {
    json!({
        "@odata.id": format!("{ROOT}/"),
        "@odata.type": odata_type("ServiceRoot"),
        "Id": "RootService",
        "Name": format!("monarch: chassis {}", info.chassis),
        "RedfishVersion": "1.21.0",
        "UUID": info.uuid,
        "Product": "monarch",
        "Vendor": "monarch",
        "Systems": link(&format!("{ROOT}/Systems")),
        "Chassis": link(&format!("{ROOT}/Chassis")),
        "Managers": link(&format!("{ROOT}/Managers")),
        "SessionService": link(&format!("{ROOT}/SessionService")),
        "EventService": link(&format!("{ROOT}/EventService")),
        "Links": { "Sessions": link(&format!("{ROOT}/SessionService/Sessions")) },
    })
}

/// A resource collection.
pub fn collection(path: &str, schema: &str, name: &str, members: &[String]) -> Value {
    json!({
        "@odata.id": path,
        "@odata.type": odata_type(schema),
        "Name": name,
        "Members@odata.count": members.len(),
        "Members": members.iter().map(|m| link(m)).collect::<Vec<_>>(),
    })
}

/// The Reset types a processor takes, and what each does.
pub const RESET_TYPES: &[&str] = &["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart"];

/// The Reset types the chassis takes (main power).
pub const CHASSIS_RESET_TYPES: &[&str] = &["On", "ForceOff", "GracefulShutdown"];

/// A processor's state as Redfish names it: (PowerState, Status.State, Status.Health,
/// BootProgress.LastState).
pub fn states(state: &str, ready: bool) -> (&'static str, &'static str, Option<&'static str>, &'static str) {
    match state {
        "running" if ready => ("On", "Enabled", Some("OK"), "OSRunning"),
        // Runs, but has not said its services are up.
        "running" => ("On", "Starting", Some("OK"), "OSBootStarted"),
        "booting" | "restarting" => ("PoweringOn", "Starting", Some("OK"), "OSBootStarted"),
        "shut_down" => ("Off", "Disabled", Some("OK"), "None"),
        "off" => ("Off", "StandbyOffline", Some("OK"), "None"),
        "failed" => ("Off", "UnavailableOffline", Some("Critical"), "None"),
        _ => ("Off", "Absent", None, "None"),
    }
}

/// One secondary as a ComputerSystem. `p` is its entry in the supervisor's status;
/// `running_since` when its image last came up (delivered and verified).
pub fn system(info: &Info, p: &Value, running_since: Option<&str>) -> Value {
    let id = p["id"].as_str().unwrap_or_default();
    let state = p["state"].as_str().unwrap_or_default();
    let (power, st, health, progress) = states(state, p["ready"].as_bool().unwrap_or(false));
    let path = format!("{ROOT}/Systems/{id}");
    let mut status = json!({ "State": st });
    if let Some(h) = health {
        status["Health"] = json!(h);
    }
    let mut boot = json!({ "LastState": progress });
    if let Some(t) = running_since.filter(|_| state == "running") {
        boot["LastStateTime"] = json!(t);
    }
    let mut description = format!(
        "secondary processor {id} of chassis {}: {state}, {} restart(s), {} power domain",
        info.chassis,
        p["restarts"].as_u64().unwrap_or(0),
        p["power"].as_str().unwrap_or("aux"),
    );
    if let Some(why) = p["why"].as_str() {
        description.push_str(&format!(" ({why})"));
    }
    json!({
        "@odata.id": path,
        "@odata.type": odata_type("ComputerSystem"),
        "Id": id,
        "Name": id,
        "Description": description,
        "SystemType": "Physical",
        "PowerState": power,
        "Status": status,
        "BootProgress": boot,
        "LogServices": link(&format!("{path}/LogServices")),
        "Links": {
            "Chassis": [link(&format!("{ROOT}/Chassis/{}", info.chassis_id))],
            "ManagedBy": [link(&format!("{ROOT}/Managers/{}", info.monarch))],
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": format!("{path}/Actions/ComputerSystem.Reset"),
                "ResetType@Redfish.AllowableValues": RESET_TYPES,
            }
        },
    })
}

/// The chassis: its main power and the systems in it.
pub fn chassis(info: &Info, status: &Value) -> Value {
    let path = format!("{ROOT}/Chassis/{}", info.chassis_id);
    let on = status["main_power"].as_str() == Some("on");
    json!({
        "@odata.id": path,
        "@odata.type": odata_type("Chassis"),
        "Id": info.chassis_id,
        "Name": info.chassis,
        "Description": format!(
            "chassis {}: main power {} ({})",
            info.chassis,
            if on { "on" } else { "off" },
            status["main_power_mode"].as_str().unwrap_or("auto")
        ),
        "ChassisType": "Enclosure",
        "PowerState": if on { "On" } else { "Off" },
        "Status": { "State": "Enabled", "Health": "OK" },
        "Links": {
            "ComputerSystems": info.systems.iter().map(|s| link(&format!("{ROOT}/Systems/{s}"))).collect::<Vec<_>>(),
            "ManagedBy": [link(&format!("{ROOT}/Managers/{}", info.monarch))],
        },
        "Actions": {
            "#Chassis.Reset": {
                "target": format!("{path}/Actions/Chassis.Reset"),
                "ResetType@Redfish.AllowableValues": CHASSIS_RESET_TYPES,
            }
        },
    })
}

/// A management processor: the monarch (with the election's epoch), or a serf.
pub fn manager(info: &Info, id: &str, epoch: u64) -> Value {
    let path = format!("{ROOT}/Managers/{id}");
    let monarch = id == info.monarch;
    let mut doc = json!({
        "@odata.id": path,
        "@odata.type": odata_type("Manager"),
        "Id": id,
        "Name": id,
        "ManagerType": "ManagementController",
        "PowerState": "On",
        "Oem": { "Monarch": {
            "@odata.type": "#MonarchManager.v1_0_0.Monarch",
            "Role": if monarch { "monarch" } else { "serf" },
            "Epoch": epoch,
        } },
    });
    if monarch {
        doc["Description"] = json!(format!(
            "{id}: the elected monarch of chassis {} (election epoch {epoch}); it supervises the secondaries",
            info.chassis
        ));
        doc["Status"] = json!({ "State": "Enabled", "Health": "OK" });
        doc["LogServices"] = link(&format!("{path}/LogServices"));
        doc["Links"] = json!({
            "ManagerForServers": info.systems.iter().map(|s| link(&format!("{ROOT}/Systems/{s}"))).collect::<Vec<_>>(),
            "ManagerForChassis": [link(&format!("{ROOT}/Chassis/{}", info.chassis_id))],
        });
    } else {
        doc["Description"] = json!(format!(
            "{id}: a serf of chassis {} (election epoch {epoch}): a monarch candidate standing by to take over",
            info.chassis
        ));
        doc["Status"] = json!({ "State": "StandbySpare" });
    }
    doc
}

/// A log service: `owner` is the path of the system or manager it belongs to.
pub fn log_service(owner: &str, name: &str, max: usize) -> Value {
    let path = format!("{owner}/LogServices/Log");
    json!({
        "@odata.id": path,
        "@odata.type": odata_type("LogService"),
        "Id": "Log",
        "Name": format!("{name}: reboot causes and events"),
        "ServiceEnabled": true,
        "MaxNumberOfRecords": max,
        "OverWritePolicy": "WrapsWhenFull",
        "LogEntryType": "Event",
        "Status": { "State": "Enabled", "Health": "OK" },
        "Entries": link(&format!("{path}/Entries")),
    })
}

/// One log entry.
pub fn log_entry(owner: &str, id: &str, created: &str, severity: &str, message: &str) -> Value {
    json!({
        "@odata.id": format!("{owner}/LogServices/Log/Entries/{id}"),
        "@odata.type": odata_type("LogEntry"),
        "Id": id,
        "Name": format!("log entry {id}"),
        "EntryType": "Event",
        "Created": created,
        "Severity": severity,
        "Message": message,
    })
}

/// The session service.
pub fn session_service(timeout_s: u64) -> Value {
    json!({
        "@odata.id": format!("{ROOT}/SessionService"),
        "@odata.type": odata_type("SessionService"),
        "Id": "SessionService",
        "Name": "sessions",
        "ServiceEnabled": true,
        "SessionTimeout": timeout_s,
        "Status": { "State": "Enabled", "Health": "OK" },
        "Sessions": link(&format!("{ROOT}/SessionService/Sessions")),
    })
}

/// One session (its token is only in the `X-Auth-Token` header of the log-in answer).
pub fn session(id: &str, user: &str) -> Value {
    json!({
        "@odata.id": format!("{ROOT}/SessionService/Sessions/{id}"),
        "@odata.type": odata_type("Session"),
        "Id": id,
        "Name": format!("session of {user}"),
        "UserName": user,
    })
}

/// The event service: events are streamed, not pushed.
pub fn event_service() -> Value {
    json!({
        "@odata.id": format!("{ROOT}/EventService"),
        "@odata.type": odata_type("EventService"),
        "Id": "EventService",
        "Name": "the supervisor's events",
        "Description": "Every event of the supervisor (losses, restarts, notices and answers, power, the boot's phases) as a Server-Sent Events stream; push subscriptions are not offered.",
        "ServiceEnabled": true,
        "ServerSentEventUri": format!("{ROOT}/EventService/SSE"),
        "Status": { "State": "Enabled", "Health": "OK" },
        "Subscriptions": link(&format!("{ROOT}/EventService/Subscriptions")),
    })
}

/// One event for the Server-Sent Events stream.
pub fn event(n: u64, created: &str, severity: &str, message: &str, origin: &str, raw: &Value) -> Value {
    json!({
        "@odata.type": odata_type("Event"),
        "Id": n.to_string(),
        "Name": "monarch supervisor event",
        "Context": "",
        "Events": [{
            "EventId": n.to_string(),
            "EventTimestamp": created,
            "MessageId": "ResourceEvent.1.4.ResourceChanged",
            "MessageSeverity": severity,
            "Message": message,
            "OriginOfCondition": link(origin),
            "Oem": { "Monarch": raw },
        }],
    })
}

/// A Redfish error body: `message` says what is wrong and the fix.
pub fn error(message_id: &str, message: &str) -> Value {
    let id = format!("Base.1.22.{message_id}");
    json!({
        "error": {
            "code": id,
            "message": message,
            "@Message.ExtendedInfo": [{
                "@odata.type": odata_type("Message"),
                "MessageId": id,
                "Message": message,
                "Severity": "Critical",
                "MessageSeverity": "Critical",
                "Resolution": "See the message.",
            }],
        }
    })
}

/// An action's answer: it was carried out, with what happened on the way (deferrals).
pub fn success(lines: &[String]) -> Value {
    let mut info = vec![json!({
        "@odata.type": odata_type("Message"),
        "MessageId": "Base.1.22.Success",
        "Message": "The request completed successfully.",
        "MessageSeverity": "OK",
        "Resolution": "None.",
    })];
    info.extend(lines.iter().map(|l| {
        json!({
            "@odata.type": odata_type("Message"),
            "MessageId": "Base.1.22.Success",
            "Message": l,
            "MessageSeverity": "OK",
            "Resolution": "None.",
        })
    }));
    json!({ "@Message.ExtendedInfo": info })
}

/// The OData service document.
pub fn odata() -> Value {
    let entry = |name: &str, url: &str| json!({ "name": name, "kind": "Singleton", "url": url });
    json!({
        "@odata.context": format!("{ROOT}/$metadata"),
        "value": [
            entry("Service", &format!("{ROOT}/")),
            entry("Systems", &format!("{ROOT}/Systems")),
            entry("Chassis", &format!("{ROOT}/Chassis")),
            entry("Managers", &format!("{ROOT}/Managers")),
            entry("SessionService", &format!("{ROOT}/SessionService")),
            entry("EventService", &format!("{ROOT}/EventService")),
        ],
    })
}

/// Where the service serves its own schema (the manager's `Oem.Monarch`: role and epoch).
pub const OEM_SCHEMA_PATH: &str = "/redfish/v1/Schemas/MonarchManager_v1.xml";

/// The CSDL of `Oem.Monarch` in a Manager: whether it is the monarch or a serf, and the
/// election's epoch.
pub const OEM_SCHEMA: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">
  <edmx:Reference Uri="http://docs.oasis-open.org/odata/odata/v4.0/errata03/csd01/complete/vocabularies/Org.OData.Core.V1.xml">
    <edmx:Include Namespace="Org.OData.Core.V1" Alias="OData"/>
  </edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/RedfishExtensions_v1.xml">
    <edmx:Include Namespace="RedfishExtensions.v1_0_0" Alias="Redfish"/>
  </edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/Resource_v1.xml">
    <edmx:Include Namespace="Resource"/>
    <edmx:Include Namespace="Resource.v1_0_0"/>
  </edmx:Reference>
  <edmx:DataServices>
    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="MonarchManager">
      <Annotation Term="Redfish.OwningEntity" String="monarch"/>
      <ComplexType Name="Monarch" BaseType="Resource.OemObject" Abstract="true">
        <Annotation Term="OData.Description" String="The management processor's place in monarch election."/>
        <Annotation Term="OData.LongDescription" String="This type shall contain the management processor's role in monarch election and the election's epoch."/>
      </ComplexType>
    </Schema>
    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="MonarchManager.v1_0_0">
      <Annotation Term="Redfish.OwningEntity" String="monarch"/>
      <ComplexType Name="Monarch" BaseType="MonarchManager.Monarch">
        <Annotation Term="OData.AdditionalProperties" Bool="false"/>
        <Annotation Term="OData.Description" String="The management processor's place in monarch election."/>
        <Annotation Term="OData.LongDescription" String="This type shall contain the management processor's role in monarch election and the election's epoch."/>
        <Property Name="Role" Type="Edm.String" Nullable="false">
          <Annotation Term="OData.Permissions" EnumMember="OData.Permission/Read"/>
          <Annotation Term="OData.Description" String="monarch: elected, it supervises the chassis; serf: a candidate standing by."/>
          <Annotation Term="OData.LongDescription" String="This property shall contain monarch for the elected management processor and serf for the others."/>
        </Property>
        <Property Name="Epoch" Type="Edm.Int64" Nullable="false">
          <Annotation Term="OData.Permissions" EnumMember="OData.Permission/Read"/>
          <Annotation Term="OData.Description" String="The election's epoch: one more at every failover."/>
          <Annotation Term="OData.LongDescription" String="This property shall contain the epoch of the monarch election in force."/>
        </Property>
      </ComplexType>
    </Schema>
  </edmx:DataServices>
</edmx:Edmx>
"#;

/// The CSDL `$metadata` document: a reference to each schema the service uses (at DMTF's
/// published address; clients and validators keep their own copies).
pub fn metadata() -> String {
    let mut refs = String::new();
    for (schema, version) in SCHEMAS {
        refs.push_str(&format!(
            "  <edmx:Reference Uri=\"http://redfish.dmtf.org/schemas/v1/{schema}_v1.xml\">\n    <edmx:Include Namespace=\"{schema}\"/>\n"
        ));
        if !version.is_empty() {
            refs.push_str(&format!("    <edmx:Include Namespace=\"{schema}.{version}\"/>\n"));
        }
        refs.push_str("  </edmx:Reference>\n");
    }
    refs.push_str(&format!(
        "  <edmx:Reference Uri=\"{OEM_SCHEMA_PATH}\">\n    <edmx:Include Namespace=\"MonarchManager\"/>\n    <edmx:Include Namespace=\"MonarchManager.v1_0_0\"/>\n  </edmx:Reference>\n"
    ));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<edmx:Edmx xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\" Version=\"4.0\">\n{refs}  <edmx:DataServices>\n    <Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"Service\">\n      <EntityContainer Name=\"Service\" Extends=\"ServiceRoot.{}.ServiceContainer\"/>\n    </Schema>\n  </edmx:DataServices>\n</edmx:Edmx>\n",
        SCHEMAS[0].1
    )
}

/// A UUID for the service, stable for a chassis name (RFC 9562 version 8: name-derived).
pub fn uuid(chassis: &str) -> String {
    let h = blake3::hash(format!("monarch redfish service {chassis}").as_bytes());
    let mut b: [u8; 16] = h.as_bytes()[..16].try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Info {
        Info {
            chassis: "server-dpus".into(),
            chassis_id: "server-dpus".into(),
            uuid: uuid("server-dpus"),
            systems: vec!["host".into(), "dpu0".into()],
            managers: vec!["bmc".into()],
            monarch: "bmc".into(),
        }
    }

    #[test]
    fn a_uuid_is_well_formed_and_stable() {
        let u = uuid("server-dpus");
        assert_eq!(u, uuid("server-dpus"));
        assert_ne!(u, uuid("other"));
        let parts: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&u[14..15], "8", "version 8");
    }

    #[test]
    fn a_running_system_is_on_and_offers_every_reset() {
        let p = json!({"id": "dpu0", "state": "running", "ready": true, "restarts": 1, "power": "aux"});
        let d = system(&info(), &p, Some("2026-12-07T00:00:00Z"));
        assert_eq!(d["PowerState"], "On");
        assert_eq!(d["Status"]["State"], "Enabled");
        assert_eq!(d["BootProgress"]["LastState"], "OSRunning");
        assert_eq!(d["BootProgress"]["LastStateTime"], "2026-12-07T00:00:00Z");
        assert_eq!(d["@odata.type"], "#ComputerSystem.v1_27_0.ComputerSystem");
        assert_eq!(
            d["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"],
            json!(RESET_TYPES)
        );
        assert_eq!(d["Links"]["ManagedBy"][0]["@odata.id"], "/redfish/v1/Managers/bmc");
    }

    #[test]
    fn a_failed_system_is_off_and_critical() {
        let p = json!({"id": "dpu0", "state": "failed", "ready": false, "why": "restart limit"});
        let d = system(&info(), &p, Some("t"));
        assert_eq!(
            (d["PowerState"].as_str(), d["Status"]["Health"].as_str()),
            (Some("Off"), Some("Critical"))
        );
        assert!(d["BootProgress"].get("LastStateTime").is_none());
        assert!(d["Description"].as_str().unwrap_or_default().contains("restart limit"));
    }

    #[test]
    fn metadata_references_every_schema_once() {
        let m = metadata();
        let doc = roxmltree::Document::parse(&m).expect("well-formed XML");
        let refs = doc.descendants().filter(|n| n.has_tag_name("Reference")).count();
        assert_eq!(refs, SCHEMAS.len() + 1, "and the service's own");
        roxmltree::Document::parse(OEM_SCHEMA).expect("the OEM schema is well-formed XML");
        assert!(m.contains("Namespace=\"ComputerSystem.v1_27_0\""));
    }

    #[test]
    fn a_collection_counts_its_members() {
        let c = collection(
            "/redfish/v1/Systems",
            "ComputerSystemCollection",
            "systems",
            &["/a".into(), "/b".into()],
        );
        assert_eq!(c["Members@odata.count"], 2);
        assert_eq!(c["@odata.type"], "#ComputerSystemCollection.ComputerSystemCollection");
    }
}
