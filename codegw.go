// Package codegw holds the domain types shared by every part of the code
// interpreter gateway: execution statuses, streamed events, the stateless
// execute request and answer, sessions, and the application error type.
//
// It imports only the standard library. The kernel wire protocol lives in
// kernel/, sessions in session/, the HTTP API in gateway/ and persistence in
// store/; cmd/codegw wires them together.
package codegw

import (
	"crypto/rand"
	"strconv"
	"strings"
	"time"
)

// NewID returns a random id of 26 lowercase base32 characters (130 bits):
// unguessable, and safe in file, container and URL names. Prefixes of it
// are shorter ids of 5 bits a character.
func NewID() string { return strings.ToLower(rand.Text()) }

// Status is the final state of one execution.
type Status string

// Execution statuses. Every status other than StatusOK carries a non-empty
// error message in an ExecuteResult, so a failure never looks like success.
const (
	StatusOK          Status = "ok"          // the code ran to completion
	StatusError       Status = "error"       // the code raised
	StatusTimeout     Status = "timeout"     // the deadline passed; the kernel was interrupted or killed
	StatusInterrupted Status = "interrupted" // a caller interrupted it
	StatusDied        Status = "died"        // the kernel process died (os._exit, segfault, killed)
	StatusOOM         Status = "oom"         // the kernel hit its memory limit and was killed
	StatusPidsLimit   Status = "pids_limit"  // the kernel hit its process limit (fork bomb)
	StatusRejected    Status = "rejected"    // it never ran: its inputs were refused or the server was saturated
)

// Output is one rich output of an execution, in the order it was produced.
type Output struct {
	// Type is "display_data", "execute_result" or "update_display_data".
	Type string `json:"type"`
	// MIME is the chosen representation, e.g. "image/png" or "text/html".
	MIME string `json:"mime"`
	// URL is where a stored image can be fetched, for images.
	URL string `json:"url,omitempty"`
	// Data is the textual payload (html, markdown, json text, svg), or the
	// base64 image when inline images were requested.
	Data string `json:"data,omitempty"`
	// Text is the text/plain representation when there is one.
	Text string `json:"text,omitempty"`
	// DisplayID is the transient display id, when the kernel gave one.
	DisplayID string `json:"display_id,omitempty"`
}

// OutputFile is a file the code wrote to /code/output, stored by the gateway.
type OutputFile struct {
	Filename     string `json:"filename"`
	OriginalName string `json:"original_name"`
	SizeBytes    int64  `json:"size_bytes"`
	URL          string `json:"url"`
}

// InputFile is a file downloaded into /code/input before the code ran.
type InputFile struct {
	URL          string `json:"url"`
	OriginalName string `json:"original_name"`
	LocalName    string `json:"local_name"`
	LocalPath    string `json:"local_path"`
	SizeBytes    int64  `json:"size_bytes"`
}

// ExecuteRequest is the body of the stateless and the session execute calls.
// Code and Files are the original project's fields; the rest are extensions.
type ExecuteRequest struct {
	Code  string   `json:"code"`
	Files []string `json:"files"`
	// Timeout in seconds; capped by the server's EXECUTION_TIMEOUT.
	Timeout float64 `json:"timeout,omitempty"`
	// InlineImages asks for base64 image data in outputs as well as URLs.
	InlineImages bool `json:"inline_images,omitempty"`
}

// ExecuteResult is the answer of an execute call. The first six fields keep
// the names and meanings of the original project.
type ExecuteResult struct {
	Result        string       `json:"result"`
	Error         *string      `json:"error"`
	ExecutionTime float64      `json:"execution_time"`
	ImageURL      *string      `json:"image_url"`
	Files         []OutputFile `json:"files"`
	Inputs        []InputFile  `json:"inputs"`

	Status         Status   `json:"status"`
	Stdout         string   `json:"stdout"`
	Stderr         string   `json:"stderr"`
	Outputs        []Output `json:"outputs"`
	Images         []string `json:"images"`
	ExecutionCount int      `json:"execution_count"`
	Truncated      bool     `json:"truncated"`
	// EName and EValue name the exception when Status is "error".
	EName     string   `json:"ename,omitempty"`
	EValue    string   `json:"evalue,omitempty"`
	Traceback []string `json:"traceback,omitempty"`
	// Restored is set on the first answer of a session resumed from a
	// snapshot.
	Restored *Restored `json:"restored,omitempty"`
}

// Event types streamed to websocket and NDJSON clients.
const (
	EventStatus       = "status"
	EventStream       = "stream"
	EventDisplay      = "display"
	EventResult       = "result"
	EventError        = "error"
	EventInputRequest = "input_request"
	EventFile         = "file"
	EventDone         = "done"
	EventClosed       = "closed"
	EventGap          = "gap"
)

// Event is one message streamed to a client while code runs. Seq increases
// by one per event within a session, so a client that reconnects can ask for
// what it missed.
type Event struct {
	Type        string `json:"type"`
	Seq         uint64 `json:"seq,omitempty"`
	ExecutionID string `json:"execution_id,omitempty"`

	// status: "busy", "idle", "queued", "restarted"...; done: the final status.
	State string `json:"state,omitempty"`
	// stream
	Name string `json:"name,omitempty"`
	Text string `json:"text,omitempty"`
	// display, result
	Output *Output `json:"output,omitempty"`
	// error
	EName     string   `json:"ename,omitempty"`
	EValue    string   `json:"evalue,omitempty"`
	Traceback []string `json:"traceback,omitempty"`
	// input_request
	Prompt   string `json:"prompt,omitempty"`
	Password bool   `json:"password,omitempty"`
	// file
	File *OutputFile `json:"file,omitempty"`
	// done
	Status         Status  `json:"status,omitempty"`
	Error          string  `json:"error,omitempty"`
	Duration       float64 `json:"duration,omitempty"`
	ExecutionCount int     `json:"execution_count,omitempty"`
	Truncated      bool    `json:"truncated,omitempty"`
	// closed, gap
	Reason string `json:"reason,omitempty"`
	// restored (a status event): what a resumed session got back
	Restored *Restored `json:"restored,omitempty"`
}

// Restored says what a session resumed from a snapshot got back: the
// variables restored, those skipped (each with its reason), and which
// snapshot it came from. Lost counts the executions run after the
// snapshot that the session no longer reflects (an instance died between
// its last checkpoint and its end); it is zero after a pause.
type Restored struct {
	Snapshot   string        `json:"snapshot"`
	Kind       string        `json:"kind"`
	TakenAt    time.Time     `json:"taken_at"`
	Variables  []string      `json:"variables"`
	Skipped    []SkippedName `json:"skipped"`
	Executions int           `json:"executions"`
	Lost       int           `json:"lost_executions"`
	Message    string        `json:"message"`
}

// SkippedName is a variable a snapshot could not carry, and why.
type SkippedName struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Snapshot describes a stored snapshot of a session (a pause or a
// checkpoint).
type Snapshot struct {
	ID        string        `json:"id"`
	Session   string        `json:"session_id"`
	Kind      string        `json:"kind"`
	TakenAt   time.Time     `json:"taken_at"`
	Bytes     int64         `json:"bytes"`
	Variables []string      `json:"variables"`
	Skipped   []SkippedName `json:"skipped"`
	// Executions is how many executions the session had run when it was
	// taken.
	Executions int `json:"executions"`
}

// SessionInfo describes a session: a kernel owned by one API key, live
// or paused.
type SessionInfo struct {
	ID          string            `json:"id"`
	Owner       string            `json:"-"`
	Instance    string            `json:"instance,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	LastActive  time.Time         `json:"last_active"`
	IdleTimeout Duration          `json:"idle_timeout"`
	State       string            `json:"state"`
	Env         map[string]string `json:"env,omitempty"`
	Executions  int               `json:"executions"`
	// Snapshot names the snapshot a paused session (State "paused") is
	// resumed from by its next use.
	Snapshot string `json:"snapshot,omitempty"`
}

// Duration is a time.Duration that reads and writes JSON as seconds.
type Duration time.Duration

// MarshalJSON writes the duration as a number of seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, time.Duration(d).Seconds(), 'f', -1, 64), nil
}

// UnmarshalJSON reads a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return Errorf(EINVALID, "duration must be a number of seconds")
	}
	*d = Duration(f * float64(time.Second))
	return nil
}
