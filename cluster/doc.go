// Package cluster owns everything that makes several codegw instances one
// deployment behind a load balancer without sticky sessions:
//
//   - membership (Membership): this instance's entry in the shared store's
//     instance registry, kept alive by heartbeats, and the reconciliation of
//     the session records naming this instance with the sessions it really
//     holds, after store outages included;
//   - routing (Router): a request for a session another instance holds is
//     located in the store and forwarded to the holder (REST, NDJSON streams,
//     uploads, downloads and websockets), and a session listing covers every
//     instance.
//
// Each part depends only on the few store methods it uses (MemberStore,
// RouteStore); store/redis satisfies both. With a single instance (no
// shared store) nothing here is used.
package cluster
