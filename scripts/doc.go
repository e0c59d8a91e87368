// Package scripts holds the shell scripts that install, start and build what
// codegw and its tests need (see README.md and DEVELOPING.md), and the tests
// that keep them honest: strict mode, installs only up front, no registry
// address, and the image-cache rules of lib.sh on a real Docker engine. It
// has no Go code of its own.
package scripts
