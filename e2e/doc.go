// Package e2e holds the end-to-end tests that run codegw as separate
// processes: several instances built from cmd/codegw against one real
// redis-server and real kernels, exercising routing between instances,
// instance loss and Redis outages (cluster_test.go), and the gateway image
// run on a Docker engine (image_test.go). It has no code of its own.
package e2e
