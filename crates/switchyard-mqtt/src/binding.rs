//! The MQTT 5 binding: topics for calls and events, user properties both ways, CloudEvents
//! attributes as user properties, a publish as an envelope.

use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

use switchyard_core::codec::Codec;
use switchyard_core::error::TransportError;
use switchyard_core::message::{header as h, new_id, CloudEventAttribute as Ce, Envelope, Headers};

/// User property carrying the error code of a failed call's reply.
pub(crate) const STATUS: &str = "x-status";
/// CloudEvents attributes that travel as bare user properties (the MQTT 5 binding).
pub(crate) const CE_ATTRIBUTES: [&str; 7] = [
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "subject",
    "dataschema",
];

pub(crate) fn check_topic(url: &str, topic: &str) -> Result<(), TransportError> {
    if topic.is_empty()
        || topic.contains(['+', '#', '\0'])
        || topic.starts_with('$')
        || topic.starts_with("sy/")
    {
        return Err(TransportError::invalid_url(
            url,
            format!("topic {topic:?} is not usable on MQTT (no '+', '#', leading '$' or 'sy/')"),
        ));
    }
    Ok(())
}

/// User properties and content type of an outgoing event.
pub(crate) fn event_properties(envelope: &Envelope) -> PublishProperties {
    let mut user = Vec::with_capacity(envelope.headers.len() + 4);
    for (k, v) in envelope.headers.iter() {
        if k != h::CONTENT_TYPE && !k.starts_with("ce-") {
            user.push((k.to_string(), v.to_string()));
        }
    }
    for (attr, value) in envelope.cloud_event_attributes() {
        // The binding puts the content type in the content-type property, set below.
        if attr != Ce::DataContentType {
            user.push((attr.name().to_string(), value.to_string()));
        }
    }
    PublishProperties {
        user_properties: user,
        content_type: Some(
            envelope
                .headers
                .get(h::CONTENT_TYPE)
                .unwrap_or("application/json")
                .to_string(),
        ),
        ..Default::default()
    }
}

/// The envelope of a received publish. Its properties are taken, not copied: what is kept of
/// the publish afterwards (to acknowledge or redeliver it) needs only its packet id and QoS.
pub(crate) fn envelope_of(topic: &str, p: &mut Publish) -> Envelope {
    let mut headers = Headers::new();
    let mut id = None;
    let mut content_type = None;
    if let Some(props) = p.properties.take() {
        for (k, v) in props.user_properties {
            match k.as_str() {
                "id" => id = Some(v),
                "specversion" => {}
                attr => match Ce::from_name(attr) {
                    Some(known) => headers.insert(known.header(), v),
                    // `dataschema`, which no envelope header names.
                    None if CE_ATTRIBUTES.contains(&attr) => {
                        headers.insert(format!("ce-{attr}"), v)
                    }
                    None => headers.insert(k, v),
                },
            }
        }
        content_type = props.content_type;
    }
    headers.insert(
        h::CONTENT_TYPE,
        content_type.unwrap_or_else(|| Codec::Json.content_type().to_string()),
    );
    if headers.get(h::ATTEMPT).is_none() {
        headers.insert(h::ATTEMPT, "1");
    }
    Envelope {
        id: id.unwrap_or_else(new_id),
        subject: topic.to_string(),
        headers,
        payload: p.payload.clone(),
    }
}

/// A service name usable as one topic level.
pub(crate) fn check_service(service: &str) -> Result<(), String> {
    if service.is_empty() || service.contains(['+', '#', '/', '\0']) {
        return Err(format!(
            "service name {service:?} is not usable as an MQTT topic level"
        ));
    }
    Ok(())
}

/// `sy/rpc/<namespace>/<service>/<route>`.
pub(crate) fn route_topic(namespace: &str, service: &str, route: &str) -> Result<String, String> {
    check_service(service)?;
    let path = route.trim_start_matches('/');
    if path.is_empty() || path.contains(['+', '#', '\0']) {
        return Err(format!("route {route:?} is not usable as an MQTT topic"));
    }
    Ok(format!("sy/rpc/{namespace}/{service}/{path}"))
}
