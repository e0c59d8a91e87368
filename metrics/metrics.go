// Package metrics holds the service's Prometheus collectors behind one
// nil-safe *Metrics: the gateway, the session manager, the cluster router
// and the app record through its methods, and a nil *Metrics records
// nothing, so tests and tools that build parts alone need not set it up.
//
// Names follow Jupyter Server's where they mean the same
// (http_request_duration_seconds, kernel_currently_running_total); the rest
// are under codegw_.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/codegw/codegw"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// KernelStartBuckets are Enterprise Gateway's kernel start buckets, in
// seconds.
var KernelStartBuckets = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30}

// Metrics is the registry and every collector the service records to. The
// zero of *Metrics (nil) is valid and records nothing.
type Metrics struct {
	// Registry holds the collectors; Handler serves it.
	Registry *prometheus.Registry
	executor string

	httpDuration   *prometheus.HistogramVec
	executions     *prometheus.CounterVec
	execDuration   *prometheus.HistogramVec
	kernelStart    *prometheus.HistogramVec
	queueWait      prometheus.Histogram
	truncatedBytes prometheus.Counter
	truncated      prometheus.Counter
	inputs         *prometheus.CounterVec
	refusals       *prometheus.CounterVec
	websockets     prometheus.Gauge
	storeErrors    *prometheus.CounterVec
	forwards       *prometheus.CounterVec
	snapshots      *prometheus.CounterVec
}

// New returns Metrics for an instance whose kernels run on executor
// ("local" or "docker"), with the Go runtime and process collectors.
func New(executor string) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{Registry: r, executor: executor}
	m.httpDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "http_request_duration_seconds", Help: "HTTP request duration by method, route pattern and status code.",
		Buckets: prometheus.DefBuckets,
	}, []string{"method", "handler", "status_code"})
	m.executions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "codegw_executions_total", Help: "Executions ended, by status (ok, error, timeout, interrupted, rejected, ...) and executor.",
	}, []string{"status", "executor"})
	m.execDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "codegw_execution_duration_seconds", Help: "Execution duration, from the worker taken to the answer, by executor.",
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
	}, []string{"executor"})
	m.kernelStart = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "codegw_kernel_start_duration_seconds", Help: "Kernel start duration (launch to ready), by executor and outcome.",
		Buckets: KernelStartBuckets,
	}, []string{"executor", "outcome"})
	m.queueWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "codegw_queue_wait_seconds", Help: "Time executions waited for a worker.",
		Buckets: []float64{0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
	})
	m.truncatedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "codegw_output_truncated_bytes_total", Help: "Output bytes dropped by the answer budget.",
	})
	m.truncated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "codegw_output_truncated_total", Help: "Answers cut by the output budget.",
	})
	m.inputs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "codegw_input_downloads_total", Help: "Input file downloads by outcome (ok, refused by the address guard, fetch_failed, too_large, invalid, internal).",
	}, []string{"outcome"})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "codegw_limit_refusals_total", Help: "Requests refused by a limit (429), by limit: rate, concurrency, queue, sessions.",
	}, []string{"limit"})
	m.websockets = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "codegw_websocket_connections", Help: "Open websocket connections.",
	})
	m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "codegw_store_errors_total", Help: "Session store (Redis) operations that failed, by operation.",
	}, []string{"op"})
	m.forwards = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "codegw_proxy_forwards_total", Help: "Requests forwarded to the instance holding the session, by outcome.",
	}, []string{"outcome"})
	m.snapshots = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "codegw_session_snapshots_total", Help: "Sessions paused and resumed from a snapshot, by event.",
	}, []string{"event"})
	r.MustRegister(m.httpDuration, m.executions, m.execDuration, m.kernelStart, m.queueWait,
		m.truncatedBytes, m.truncated, m.inputs, m.refusals, m.websockets, m.storeErrors, m.forwards, m.snapshots,
		panicCollector{}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Gauges are the levels read at each scrape.
type Gauges struct {
	PoolReady, PoolStarting func() int
	QueueDepth, Busy        func() int
	SessionsOpen            func() int
	// KernelsRunning counts the kernels alive on this instance (warm,
	// in sessions, and running stateless calls).
	KernelsRunning func() int
}

// Watch registers gauges read from the running service at each scrape.
func (m *Metrics) Watch(g Gauges) {
	if m == nil {
		return
	}
	gauge := func(name, help string, f func() int, labels prometheus.Labels) {
		if f == nil {
			return
		}
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(f()) }))
	}
	gauge("codegw_pool_ready", "Warm kernels ready to hand out.", g.PoolReady, nil)
	gauge("codegw_pool_starting", "Warm kernels starting.", g.PoolStarting, nil)
	gauge("codegw_queue_depth", "Executions waiting for a worker.", g.QueueDepth, nil)
	gauge("codegw_workers_busy", "Workers running an execution.", g.Busy, nil)
	gauge("codegw_sessions_open", "Sessions held by this instance.", g.SessionsOpen, nil)
	gauge("kernel_currently_running_total", "Kernels currently running, by type.", g.KernelsRunning,
		prometheus.Labels{"type": "python3"})
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// Request records an HTTP request; handler is the route pattern.
func (m *Metrics) Request(method, handler string, status int, d time.Duration) {
	if m == nil {
		return
	}
	m.httpDuration.WithLabelValues(method, handler, strconv.Itoa(status)).Observe(d.Seconds())
}

// Execution records an execution that ended with status after d.
func (m *Metrics) Execution(status string, d time.Duration) {
	if m == nil {
		return
	}
	m.executions.WithLabelValues(status, m.executor).Inc()
	if d > 0 {
		m.execDuration.WithLabelValues(m.executor).Observe(d.Seconds())
	}
}

// KernelStart records a kernel start that took d; err is its failure.
func (m *Metrics) KernelStart(d time.Duration, err error) {
	if m == nil {
		return
	}
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.kernelStart.WithLabelValues(m.executor, outcome).Observe(d.Seconds())
}

// QueueWait records the time an execution waited for a worker.
func (m *Metrics) QueueWait(d time.Duration) {
	if m == nil {
		return
	}
	m.queueWait.Observe(d.Seconds())
}

// Truncated records an answer cut by the output budget, dropping n bytes.
func (m *Metrics) Truncated(n int) {
	if m == nil {
		return
	}
	m.truncated.Inc()
	m.truncatedBytes.Add(float64(n))
}

// InputDownloads records n input downloads that ended with outcome.
func (m *Metrics) InputDownloads(outcome string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.inputs.WithLabelValues(outcome).Add(float64(n))
}

// Refused records a request refused by limit.
func (m *Metrics) Refused(limit string) {
	if m == nil {
		return
	}
	m.refusals.WithLabelValues(limit).Inc()
}

// Websocket records a websocket opened (+1) or closed (-1).
func (m *Metrics) Websocket(delta int) {
	if m == nil {
		return
	}
	m.websockets.Add(float64(delta))
}

// StoreError records a failed session store operation.
func (m *Metrics) StoreError(op string) {
	if m == nil {
		return
	}
	m.storeErrors.WithLabelValues(op).Inc()
}

// Forward records a request forwarded to another instance.
func (m *Metrics) Forward(outcome string) {
	if m == nil {
		return
	}
	m.forwards.WithLabelValues(outcome).Inc()
}

// SessionPaused records a session paused (by a client, idle culling or
// the drain).
func (m *Metrics) SessionPaused() {
	if m == nil {
		return
	}
	m.snapshots.WithLabelValues("paused").Inc()
}

// SessionResumed records a session resumed from a snapshot.
func (m *Metrics) SessionResumed() {
	if m == nil {
		return
	}
	m.snapshots.WithLabelValues("resumed").Inc()
}

var panicsDesc = prometheus.NewDesc("codegw_panics_total",
	"Panics recovered in goroutines serving a client or reading a kernel, by place; each ended only its own connection or execution.",
	[]string{"where"}, nil)

// panicCollector exports codegw.PanicCounts at each scrape.
type panicCollector struct{}

func (panicCollector) Describe(ch chan<- *prometheus.Desc) { ch <- panicsDesc }

func (panicCollector) Collect(ch chan<- prometheus.Metric) {
	for _, c := range codegw.PanicCounts() {
		ch <- prometheus.MustNewConstMetric(panicsDesc, prometheus.CounterValue, float64(c.N), c.Where)
	}
}
