// Package cluster owns everything that makes several codegw instances one
// deployment behind a load balancer without sticky sessions:
//
//   - membership (Membership): this instance's entry in the shared store's
//     instance registry, kept alive by heartbeats, and the reconciliation of
//     the session records naming this instance with the sessions it really
//     holds, after store outages included;
//   - routing (Router): a request for a session another instance holds is
//     located in the store (Locate: the holder, or the answer when there is
//     none), forwarded requests are recognised by their token, and a
//     session listing covers every instance. The proxying itself (REST,
//     NDJSON streams, uploads, downloads and websockets) is HTTP server
//     code and lives in the gateway (gateway.Forwarder); this package
//     imports no web framework.
//
// Each part depends only on the few store methods it uses (MemberStore,
// RouteStore); store/redis satisfies both. With a single instance (no
// shared store) nothing here is used.
package cluster
