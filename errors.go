package codegw

import (
	"errors"
	"fmt"
)

// Application error codes. Each maps to one HTTP status in the gateway.
const (
	EINVALID      = "invalid"      // the request is malformed or breaks a rule
	ENOTFOUND     = "not_found"    // no such session, image or file (or not yours)
	EUNAUTHORIZED = "unauthorized" // missing or unknown API key
	EFORBIDDEN    = "forbidden"    // refused by policy, e.g. an input URL to an internal address
	ETOOLARGE     = "too_large"    // a body, file or count limit was exceeded
	ELIMIT        = "limit"        // too many sessions or queued executions
	EBUSY         = "busy"         // the server is saturated; try again
	ECONFLICT     = "conflict"     // the resource is in a state that forbids the call
	EUNAVAILABLE  = "unavailable"  // a dependency (kernel, Redis, Docker) is unavailable
	ELOST         = "session_lost" // the instance holding the session is gone
	EFETCH        = "fetch_failed" // an input file could not be downloaded
	EINTERNAL     = "internal"     // a bug or unexpected failure; details are logged only
)

// Error is an error whose code and message may be shown to the caller.
type Error struct {
	Code    string
	Message string
	// Err is an optional cause, kept for logs and errors.Is.
	Err error
}

// Error returns the message, with the cause when there is one.
func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// WrapError returns an *Error with the given code and message and err as cause.
func WrapError(code string, err error, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the caller-safe message of err: the message of the
// first *Error in its chain, or "Internal error." for anything else.
func ErrorMessage(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Message
	}
	return "Internal error."
}
