// Package cluster holds the end-to-end tests of a multi-instance
// deployment: several codegw processes built from cmd/codegw, one real
// redis-server and real kernels, exercising routing between instances,
// instance loss and Redis outages (see cluster_test.go). It has no code of
// its own.
package cluster
