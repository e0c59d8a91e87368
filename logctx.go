package codegw

import (
	"context"
	"log/slog"
)

type logAttrsKey struct{}

// WithLogAttrs returns ctx carrying key-value pairs (as slog takes them)
// that every line logged with it names: the request id, the session and
// execution ids, so that kernel and cluster lines about a request can be
// found from its request line.
func WithLogAttrs(ctx context.Context, args ...any) context.Context {
	prev := LogAttrs(ctx)
	all := make([]any, 0, len(prev)+len(args))
	return context.WithValue(ctx, logAttrsKey{}, append(append(all, prev...), args...))
}

// LogAttrs returns the key-value pairs WithLogAttrs put in ctx.
func LogAttrs(ctx context.Context) []any {
	if ctx == nil {
		return nil
	}
	a, _ := ctx.Value(logAttrsKey{}).([]any)
	return a
}

// ContextHandler adds the pairs WithLogAttrs put in a record's context to
// the record: log with InfoContext, WarnContext... to have them.
type ContextHandler struct{ slog.Handler }

// Handle adds the context's pairs and passes the record on.
func (h ContextHandler) Handle(ctx context.Context, r slog.Record) error {
	if a := LogAttrs(ctx); len(a) > 0 {
		r = r.Clone()
		r.Add(a...)
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs keeps the context handling on the derived handler.
func (h ContextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return ContextHandler{h.Handler.WithAttrs(attrs)}
}

// WithGroup keeps the context handling on the derived handler.
func (h ContextHandler) WithGroup(name string) slog.Handler {
	return ContextHandler{h.Handler.WithGroup(name)}
}
