package kernel

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/codegw/codegw"
)

// ConnectionInfo is the content of a Jupyter connection file: where the
// kernel's five sockets listen and the key that signs messages.
type ConnectionInfo struct {
	Transport       string `json:"transport"` // "ipc" or "tcp"
	IP              string `json:"ip"`        // tcp: an address; ipc: a path prefix
	ShellPort       int    `json:"shell_port"`
	IOPubPort       int    `json:"iopub_port"`
	StdinPort       int    `json:"stdin_port"`
	ControlPort     int    `json:"control_port"`
	HBPort          int    `json:"hb_port"`
	Key             string `json:"key"`
	SignatureScheme string `json:"signature_scheme"`
	KernelName      string `json:"kernel_name"`
}

// Channel names.
const (
	Shell   = "shell"
	IOPub   = "iopub"
	Stdin   = "stdin"
	Control = "control"
	HB      = "hb"
)

// Endpoint returns the ZeroMQ endpoint the gateway dials for one channel.
// Its scheme names our guarded transports (see transport.go), not the
// plain ipc:// and tcp:// of the connection file.
func (c ConnectionInfo) Endpoint(channel string) string {
	var port int
	switch channel {
	case Shell:
		port = c.ShellPort
	case IOPub:
		port = c.IOPubPort
	case Stdin:
		port = c.StdinPort
	case Control:
		port = c.ControlPort
	case HB:
		port = c.HBPort
	}
	if c.Transport == "ipc" {
		return guardedIPC + "://" + c.IP + "-" + strconv.Itoa(port)
	}
	return guardedTCP + "://" + net.JoinHostPort(c.IP, strconv.Itoa(port))
}

// SocketFiles returns the paths of the ipc socket files, which the kernel
// leaves behind when it exits; nil for tcp.
func (c ConnectionInfo) SocketFiles() []string {
	if c.Transport != "ipc" {
		return nil
	}
	var files []string
	for _, p := range []int{c.ShellPort, c.IOPubPort, c.StdinPort, c.ControlPort, c.HBPort} {
		files = append(files, c.IP+"-"+strconv.Itoa(p))
	}
	return files
}

// NewKey returns a random signing key of 260 bits.
func NewKey() string { return codegw.NewID() + codegw.NewID() }

// NewIPCConnection returns connection info for the ipc transport with socket
// files named prefix-1 ... prefix-5. Unix socket paths are limited to 107
// bytes, so prefix must be short.
func NewIPCConnection(prefix string) (ConnectionInfo, error) {
	if len(prefix)+3 > 100 {
		return ConnectionInfo{}, fmt.Errorf("kernel: ipc path %q too long for a unix socket", prefix)
	}
	return ConnectionInfo{
		Transport: "ipc", IP: prefix,
		ShellPort: 1, IOPubPort: 2, StdinPort: 3, ControlPort: 4, HBPort: 5,
		Key: NewKey(), SignatureScheme: "hmac-sha256", KernelName: "python3",
	}, nil
}

// NewTCPConnection returns connection info on 127.0.0.1 with five free ports.
// The ports are free when chosen; a kernel that loses the race fails to start.
func NewTCPConnection() (ConnectionInfo, error) {
	ports := make([]int, 5)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ConnectionInfo{}, fmt.Errorf("kernel: pick port: %w", err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ConnectionInfo{
		Transport: "tcp", IP: "127.0.0.1",
		ShellPort: ports[0], IOPubPort: ports[1], StdinPort: ports[2], ControlPort: ports[3], HBPort: ports[4],
		Key: NewKey(), SignatureScheme: "hmac-sha256", KernelName: "python3",
	}, nil
}

// WriteFile writes the connection file world-readable (0644): the kernel's
// user, which in a container differs from the gateway's, must read it. The
// key in it stays secret because the directory holding the file is private
// to the kernel.
func (c ConnectionInfo) WriteFile(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
