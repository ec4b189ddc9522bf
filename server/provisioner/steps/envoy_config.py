"""Envoy's configuration for the REST edge: a bootstrap, plus routes and clusters in files.

Envoy turns REST/JSON into gRPC calls to the control plane (`/api/...`) and forwards each
department's own traffic (`/departments/<id>/...`) to the department's service. The
bootstrap is fixed for the life of the process; the routes (RDS) and the department
clusters (CDS) live in two files of a watched directory, so the gateway step adds and
removes departments by rewriting them, atomically, while Envoy keeps running.

Run it as `envoy -c <bootstrap> --disable-hot-restart`: without the flag Envoy makes
shared-memory files under /dev/shm for a hot restart we never do, and leaves them behind.

It lives with the steps because the gateway step rewrites the dynamic files; the edge
writes the bootstrap from it when it starts Envoy.

The functions that render are pure (plain data in, plain dicts out); only the `write_*`
functions touch the disk.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from provisioner.core.spec import check_department_id
from provisioner.steps.files import write_atomically

SERVICE = "provisioning.v1.ProvisioningService"
ROUTE_CONFIG_NAME = "provisioning_routes"
GRPC_CLUSTER = "provisioning_grpc"
OAUTH_CLUSTER = "provisioning_oauth"
ROUTES_FILE = "routes.json"
CLUSTERS_FILE = "clusters.json"
#: Edge limits (see `render_envoy_config`).
BUFFER_LIMIT_BYTES = 32 * 1024
MAX_REQUEST_BODY_BYTES = 64 * 1024
MAX_RESPONSE_BODY_BYTES = 4 * 1024 * 1024
MAX_REQUEST_HEADERS_KB = 16
MAX_CONNECTIONS = 10_000
MAX_HEAP_BYTES = 512 * 1024 * 1024

_TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
_CORS = "envoy.filters.http.cors"
_ROUTER = "envoy.filters.http.router"
_BUFFER = "envoy.filters.http.buffer"
_TYPE = "type.googleapis.com/"
_TLS_SECRET = "edge-certificate"  # noqa: S105 - the SDS resource's name


class Address(Protocol):
    """A host and port, such as `provisioner.settings.Address` (which the edge, a lower
    layer than the settings, may not import)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


#: Where Debian keeps the system's trusted certificate authorities, in one PEM bundle.
SYSTEM_CA_FILE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a department's route leads. With `tls`, Envoy connects over TLS, sends the
    host as SNI and as the Host header (a platform's edge routes by them), and accepts
    only a certificate for that host from the trusted authorities."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def https(cls, domain: str) -> Upstream:
        """The upstream of a public domain (`name` or `name:port`), reached over TLS."""
        host, sep, port = domain.rpartition(":")
        if sep and port.isdigit():
            return cls(host, int(port), tls=True)
        return cls(domain, 443, tls=True)

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def _tls(address: Address) -> bool:
    return isinstance(address, Upstream) and address.tls


def render_envoy_config(
    *,
    http_addr: Address,
    admin_addr: Address,
    grpc_addr: Address | Path,
    descriptor_path: Path,
    dynamic_dir: Path,
    oauth_addr: Path | None = None,
    cors_origins: Sequence[str] = (),
    tls_secret: Path | None = None,
) -> dict[str, Any]:
    """The Envoy v3 bootstrap: the admin endpoint, the REST listener and the gRPC cluster.

    `grpc_addr` is the server's address, or the path of its private Unix socket. With a
    `tls_secret` (the file `write_tls_secret` writes) the listener speaks TLS only.

    Routes come from `ROUTES_FILE` and department clusters from `CLUSTERS_FILE`, both in
    `dynamic_dir` (see `write_dynamic_config`). Paths must be absolute, since Envoy
    resolves them against its own working directory. With no `cors_origins` the CORS
    filter is left out of the chain altogether; with some, `write_dynamic_config` must
    be given the same origins, because Envoy reads a CORS policy from the routes only.
    """
    for what, path in (("descriptor_path", descriptor_path), ("dynamic_dir", dynamic_dir)):
        if not path.is_absolute():
            raise ValueError(f"{what} must be an absolute path, got {str(path)!r}")
    transcoder = {
        "name": _TRANSCODER,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": str(descriptor_path),
            "services": [SERVICE],
            # Route on the REST path (`/api/...`), not on the gRPC path the request is
            # rewritten to: the REST listener then exposes only the REST API.
            "match_incoming_request_route": True,
            "convert_grpc_status": True,
            "print_options": {
                "always_print_primitive_fields": True,
                "stream_sse_style_delimited": True,
            },
            "request_validation_options": {
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
            },
            # A reply (a page of 500 departments) may be larger than the connection's buffer.
            "max_response_body_size": MAX_RESPONSE_BODY_BYTES,
        },
    }
    # CORS goes first: a preflight is an OPTIONS request no gRPC method binds, which the
    # transcoder (reject_unknown_method) would answer with 404 before CORS saw it.
    cors = [{"name": _CORS, "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.cors.v3.Cors"}}]
    # An API request's body is read whole, up to a bound, before the transcoder: larger is
    # 413 from Envoy. The transcoder streams a body through (its own size option does
    # not stop it), and grpc would refuse a large message as RESOURCE_EXHAUSTED, 429.
    buffer = {
        "name": _BUFFER,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": MAX_REQUEST_BODY_BYTES,
        },
    }
    router = {
        "name": _ROUTER,
        "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
    }
    connection_manager = {
        "@type": _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rest",
        "codec_type": "AUTO",
        "rds": {
            "route_config_name": ROUTE_CONFIG_NAME,
            "config_source": _file_source(dynamic_dir, ROUTES_FILE),
        },
        "http_filters": [*(cors if cors_origins else []), buffer, transcoder, router],
        # gRPC status travels in trailers; the transcoder needs them to map errors.
        "http_protocol_options": {"enable_trailers": True},
        # Edge hardening: `/departments/a/../b/` must not reach department b's route, and
        # an escaped slash (`%2F`, which no id contains) is refused outright: unescaped, it
        # would redirect `/api/departments/x%2F..%2F..%2Fdeprovision%2Fhr` elsewhere.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "use_remote_address": True,
        # An untrusted edge, as Envoy's edge best practices have it: a connection that has
        # not sent its request's headers within 5 s is closed, one idle for a minute too;
        # a stream idle for 5 min (a watch sends a heartbeat every 15 s) is reset; no
        # overall request timeout, for watches. Headers above 16 KiB get 431, under the
        # server's own metadata limit, so REST callers never see grpc's RESOURCE_EXHAUSTED.
        "request_headers_timeout": "5s",
        "stream_idle_timeout": "300s",
        "request_timeout": "0s",
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KB,
        "common_http_protocol_options": {
            "headers_with_underscores_action": "REJECT_REQUEST",
            "idle_timeout": "60s",
            "max_requests_per_connection": 10_000,
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65_536,
            "initial_connection_window_size": 1_048_576,
        },
        # Every reply Envoy makes itself (no route, unknown method, upstream down) is
        # JSON, like the API's own errors, instead of Envoy's text/plain.
        "local_reply_config": _local_replies(),
    }
    return {
        "node": {"id": "provisioning-edge", "cluster": "provisioning"},
        "admin": {"address": _socket_address(admin_addr)},
        "static_resources": {
            "listeners": [
                {
                    "name": "rest",
                    "address": _socket_address(http_addr),
                    "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ],
                            **({"transport_socket": _downstream_tls(tls_secret)} if tls_secret else {}),
                        }
                    ],
                }
            ],
            # The control plane's cluster is static, not in the CDS file: the /api/ route
            # must work whatever the department files hold (a CDS update is accepted or
            # rejected whole, and a bad one must not take the API down with it), it is
            # warm before the listener opens, and Envoy refuses CDS updates naming a
            # static cluster, so it can only be one or the other. It also lets the
            # gateway step rewrite the files knowing nothing but the departments.
            # The authorization server's too (`oauth_addr`, its Unix socket), when it runs;
            # without it, its routes answer 503.
            "clusters": [
                _http2_cluster(GRPC_CLUSTER, grpc_addr),
                *([_cluster(OAUTH_CLUSTER, oauth_addr)] if oauth_addr else []),
            ],
        },
        "dynamic_resources": {"cds_config": _file_source(dynamic_dir, CLUSTERS_FILE)},
        "overload_manager": _overload_manager(),
    }


def write_tls_secret(path: Path, cert_file: Path, key_file: Path) -> Path:
    """The listener's certificate as a file-based SDS resource; returns its absolute path.

    Envoy re-reads the certificate and key when a file is moved into their directory (a
    rename, as Kubernetes and cert-manager replace them), without dropping a connection.
    """
    cert_file, key_file = cert_file.absolute(), key_file.absolute()
    secret = {
        "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": _TLS_SECRET,
        "tls_certificate": {
            "certificate_chain": {"filename": str(cert_file)},
            "private_key": {"filename": str(key_file)},
            "watched_directory": {"path": str(cert_file.parent)},
        },
    }
    path = path.absolute()
    write_atomically(path, _discovery_response([secret]))
    return path


def _downstream_tls(secret: Path) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                # SSE and REST clients speak HTTP/1.1; gRPC-web and curl --http2 use h2.
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificate_sds_secret_configs": [
                    {"name": _TLS_SECRET, "sds_config": _file_source(secret.parent, secret.name)}
                ],
            },
        },
    }


def _overload_manager() -> dict[str, Any]:
    """At most 10,000 client connections; near its heap budget Envoy gives memory back,
    then refuses new requests (503) rather than be killed."""
    heap = "envoy.resource_monitors.fixed_heap"

    def action(name: str, threshold: float) -> dict[str, Any]:
        return {"name": name, "triggers": [{"name": heap, "threshold": {"value": threshold}}]}

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.resource_monitors.downstream_connections"
                    ".v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": MAX_CONNECTIONS,
                },
            },
            {
                "name": heap,
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": MAX_HEAP_BYTES,
                },
            },
        ],
        "actions": [
            action("envoy.overload_actions.shrink_heap", 0.95),
            action("envoy.overload_actions.stop_accepting_requests", 0.98),
        ],
    }


#: The gRPC code (google.rpc.Code) of each HTTP status Envoy may answer with itself.
_LOCAL_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 408: 4, 413: 11, 429: 8, 431: 11, 502: 14,
                503: 14, 504: 4}  # fmt: skip


def _local_replies() -> dict[str, Any]:
    """Every reply Envoy makes itself (no route, unknown method or query parameter, body
    that is not JSON, upstream down) has the body of the API's own errors, a
    `google.rpc.Status`: the gRPC code its HTTP status stands for, Envoy's text, and an
    `ErrorInfo` saying why (domain `envoy`)."""

    def status(code: int) -> dict[str, Any]:
        info = {
            "@type": _TYPE + "google.rpc.ErrorInfo",
            "domain": "envoy",
            "reason": "%RESPONSE_CODE_DETAILS%",
        }
        # Envoy's own text can be empty: the reason leads, so a message always says something.
        message = "%RESPONSE_CODE_DETAILS%: %LOCAL_REPLY_BODY%"
        return {"json_format": {"code": code, "message": message, "details": [info]}}

    def when(http: int) -> dict[str, Any]:
        return {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {"default_value": http, "runtime_key": f"edge.local_{http}"},
                }
            }
        }

    return {
        "mappers": [
            {"filter": when(http), "body_format_override": status(code)}
            for http, code in _LOCAL_CODES.items()
        ],
        # Anything else Envoy answers by itself: UNKNOWN.
        "body_format": status(2),
    }


def render_route_config(
    departments: Mapping[str, Address], cors_origins: Sequence[str] = ()
) -> dict[str, Any]:
    """The RDS resource: `/api/` to the control plane, one prefix per department, else 404.

    `/departments/<id>/x` reaches the department's service as `/x`. Neither department
    routes nor the 404 run the transcoder, which would refuse them as unknown methods.
    """
    api_route: dict[str, Any] = {
        "name": "api",
        "match": {"prefix": "/api/"},
        # Streams (WatchProgress) live as long as the job; heartbeats keep them active.
        "route": {"cluster": GRPC_CLUSTER, "timeout": "0s"},
    }
    if cors_origins:
        api_route["typed_per_filter_config"] = {_CORS: _cors_policy(cors_origins)}
    # A department's service reads its own requests, whatever their size.
    no_transcoder = {
        name: {"@type": _TYPE + "envoy.config.route.v3.FilterConfig", "disabled": True}
        for name in (_TRANSCODER, _BUFFER)
    }
    # The authorization server: its token endpoint and its metadata, served as they are.
    oauth_routes = [
        {
            "name": f"oauth_{index}",
            "match": match,
            "route": {"cluster": OAUTH_CLUSTER, "timeout": "15s"},
            "typed_per_filter_config": {_TRANSCODER: no_transcoder[_TRANSCODER]},
        }
        for index, match in enumerate(
            [
                {"path": "/oauth2/token"},
                {"path": "/.well-known/jwks.json"},
                {"path": "/.well-known/oauth-authorization-server"},
            ]
        )
    ]
    routes = [api_route, *oauth_routes]
    for department_id, address in sorted(_checked(departments).items()):
        prefix = f"/departments/{department_id}/"
        routes += [
            {
                "name": f"department_{department_id}",
                "match": {"prefix": prefix},
                "route": {
                    "cluster": _department_cluster(department_id),
                    "prefix_rewrite": "/",
                    **({"host_rewrite_literal": address.host} if _tls(address) else {}),
                },
                "typed_per_filter_config": no_transcoder,
            },
            {
                "name": f"department_{department_id}_slash",
                "match": {"path": prefix.rstrip("/")},
                "redirect": {"path_redirect": prefix},
                "typed_per_filter_config": no_transcoder,
            },
        ]
    routes.append(
        {
            "name": "not_found",
            "match": {"prefix": "/"},
            # Sent as a local reply, so local_reply_config wraps the text in JSON.
            "direct_response": {"status": 404, "body": {"inline_string": "no route for this path"}},
            "typed_per_filter_config": no_transcoder,
        }
    )
    return {
        "@type": _TYPE + "envoy.config.route.v3.RouteConfiguration",
        "name": ROUTE_CONFIG_NAME,
        "virtual_hosts": [{"name": "edge", "domains": ["*"], "routes": routes}],
    }


def render_department_clusters(
    departments: Mapping[str, Address], ca_file: Path = SYSTEM_CA_FILE
) -> list[dict[str, Any]]:
    """The CDS resources: one HTTP/1.1 cluster per department service, TLS where asked."""
    return [
        {
            "@type": _TYPE + "envoy.config.cluster.v3.Cluster",
            **_cluster(_department_cluster(department_id), address),
            **({"transport_socket": _upstream_tls(address.host, ca_file)} if _tls(address) else {}),
            "typed_extension_protocol_options": _DEPARTMENT_HTTP,
        }
        for department_id, address in sorted(_checked(departments).items())
    ]


#: Envoy drops a pooled connection to a department service after 4 s idle, before the
#: service itself would (10 s, `department_service.httpd`): a request sent on a
#: connection the service is closing that moment would be reset (a 502/503 for nothing).
_DEPARTMENT_HTTP = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"idle_timeout": "4s"},
        "explicit_http_config": {"http_protocol_options": {}},
    }
}


def _upstream_tls(host: str, ca_file: Path) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": host,
            "common_tls_context": {
                "validation_context": {
                    "trusted_ca": {"filename": str(ca_file)},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}],
                }
            },
        },
    }


def write_envoy_config(
    path: Path,
    *,
    http_addr: Address,
    admin_addr: Address,
    grpc_addr: Address | Path,
    descriptor_path: Path,
    dynamic_dir: Path,
    oauth_addr: Path | None = None,
    cors_origins: Sequence[str] = (),
    tls_secret: Path | None = None,
) -> Path:
    """Write the bootstrap to `path` atomically and return its absolute path.

    The text is JSON, which Envoy reads for a `.json` path and, being YAML too, for a
    `.yaml` one. Envoy refuses to start unless the dynamic files exist, so when they do
    not, an empty route table and cluster list are written next to the bootstrap's
    references; existing ones are kept, since they hold the departments already routed.
    """
    dynamic_dir = dynamic_dir.absolute()
    config = render_envoy_config(
        http_addr=http_addr,
        admin_addr=admin_addr,
        grpc_addr=grpc_addr,
        oauth_addr=oauth_addr and oauth_addr.absolute(),
        descriptor_path=descriptor_path.absolute(),
        dynamic_dir=dynamic_dir,
        cors_origins=cors_origins,
        tls_secret=tls_secret,
    )
    if not (dynamic_dir / ROUTES_FILE).exists() or not (dynamic_dir / CLUSTERS_FILE).exists():
        write_dynamic_config(dynamic_dir, {}, cors_origins=cors_origins)
    path = path.absolute()
    write_atomically(path, json.dumps(config, indent=2) + "\n")
    return path


def write_dynamic_config(
    dynamic_dir: Path,
    departments: Mapping[str, Address],
    *,
    cors_origins: Sequence[str] = (),
    ca_file: Path = SYSTEM_CA_FILE,
) -> None:
    """Route every department in `departments`, and only those, through the running Envoy.

    Both files are whole state (every call lists all departments). Each is replaced by
    a rename within `dynamic_dir`, which Envoy's `watched_directory` picks up, so Envoy
    never reads half a file. Clusters are written before routes, so a new route does not
    point at a cluster Envoy has not heard of (one named by DNS may still be warming: 503
    for a moment). A removed department's cluster goes first, so its requests get 503
    for the moment until its route is gone too (404).
    """
    routes = render_route_config(departments, cors_origins)
    clusters = render_department_clusters(departments, ca_file)
    dynamic_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(dynamic_dir / CLUSTERS_FILE, _discovery_response(clusters))
    write_atomically(dynamic_dir / ROUTES_FILE, _discovery_response([routes]))


def _discovery_response(resources: list[dict[str, Any]]) -> str:
    body = json.dumps(resources, sort_keys=True)
    # A version derived from the content: /config_dump then shows which state is live.
    version = hashlib.sha256(body.encode()).hexdigest()[:16]
    return json.dumps({"version_info": version, "resources": resources}, indent=2) + "\n"


def _checked(departments: Mapping[str, Address]) -> Mapping[str, Address]:
    # The id becomes a URL prefix and a cluster name: only valid ids reach the route table.
    bad = sorted(d for d in departments if check_department_id(d))
    if bad:
        raise ValueError(f"invalid department ids for a gateway route: {', '.join(map(repr, bad))}")
    return departments


def _department_cluster(department_id: str) -> str:
    return f"department_{department_id}"


def _file_source(dynamic_dir: Path, name: str) -> dict[str, Any]:
    # Envoy reloads `path` whenever a file is moved into the watched directory, which
    # is exactly what the rename in `_write_atomically` does.
    return {
        "path_config_source": {
            "path": str(dynamic_dir / name),
            "watched_directory": {"path": str(dynamic_dir)},
        },
        "resource_api_version": "V3",
    }


def _socket_address(address: Address) -> dict[str, Any]:
    return {"socket_address": {"address": address.host, "port_value": address.port}}


def _cors_policy(origins: Sequence[str]) -> dict[str, Any]:
    matchers = [{"safe_regex": {"regex": ".*"}} if o == "*" else {"exact": o} for o in origins]
    return {
        "@type": _TYPE + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": matchers,
        "allow_methods": "GET, POST, DELETE, OPTIONS",
        "allow_headers": "authorization, content-type, x-request-id",
        "expose_headers": "grpc-status, grpc-message, retry-after, x-request-id",
        "max_age": "600",
    }


def _http2_cluster(name: str, address: Address | Path) -> dict[str, Any]:
    """The control plane's cluster. Its circuit breakers are far above what the server
    lets all principals hold at once: the server refuses a principal over its limits
    (RESOURCE_EXHAUSTED) and sheds load (UNAVAILABLE) long before Envoy's defaults (1,024
    requests) would trip, and tripped, they would refuse everyone."""
    return {
        **_cluster(name, address),
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": 1_000, "max_pending_requests": 10_000, "max_requests": 100_000}
            ]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "initial_stream_window_size": 65_536,
                        "initial_connection_window_size": 1_048_576,
                    }
                },
            }
        },
    }


def _cluster(name: str, address: Address | Path) -> dict[str, Any]:
    if isinstance(address, Path):
        pipe = {"endpoint": {"address": {"pipe": {"path": str(address)}}}}
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [pipe]}]},
        }
    host = _dialable(address.host)
    try:
        ipaddress.ip_address(host)
        discovery: dict[str, Any] = {"type": "STATIC"}
    except ValueError:
        # A name like `localhost` may resolve to ::1 first while the server listens on
        # 127.0.0.1 only.
        discovery = {"type": "STRICT_DNS", "dns_lookup_family": "V4_PREFERRED"}
    endpoint = {"endpoint": {"address": {"socket_address": {"address": host, "port_value": address.port}}}}
    return {
        "name": name,
        **discovery,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _dialable(host: str) -> str:
    # A server bound to every interface is reached on loopback.
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104


def http_url(address: Address, *, tls: bool = False) -> str:
    """`http://host:port` (`https://` with `tls`) to reach a listener at `address` from this machine."""
    host = _dialable(address.host)
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{address.port}"
