// Package artifact is the on-disk store of what executions produce and
// the gateway serves: images and output files, each under an unguessable
// name with its metadata, removed after their retention.
package artifact
