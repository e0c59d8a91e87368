package metrics_test

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw/metrics"
)

// TestNilRecordsNothing: parts built without metrics call the same methods.
func TestNilRecordsNothing(t *testing.T) {
	var m *metrics.Metrics
	m.Request("GET", "/x", 200, time.Millisecond)
	m.Execution("ok", time.Second)
	m.KernelStart(time.Second, nil)
	m.QueueWait(time.Second)
	m.Truncated(10)
	m.InputDownloads("ok", 1)
	m.Refused("rate")
	m.Websocket(1)
	m.StoreError("get")
	m.Forward("ok")
	m.Watch(metrics.Gauges{})
}

func TestExposition(t *testing.T) {
	m := metrics.New("local")
	m.Execution("ok", 2*time.Second)
	m.KernelStart(3*time.Second, errors.New("no"))
	m.Refused("rate")
	m.Watch(metrics.Gauges{KernelsRunning: func() int { return 3 }})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`codegw_executions_total{executor="local",status="ok"} 1`,
		`codegw_kernel_start_duration_seconds_bucket{executor="local",outcome="error",le="2.5"} 0`,
		`codegw_kernel_start_duration_seconds_bucket{executor="local",outcome="error",le="5"} 1`,
		`codegw_limit_refusals_total{limit="rate"} 1`,
		`kernel_currently_running_total{type="python3"} 3`,
		`go_goroutines `,
		`process_open_fds `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
