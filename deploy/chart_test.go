// Package deploy tests the Helm chart in helm/codegw through Helm's own Go
// module (lint, render with schema validation), decoding every rendered
// manifest strictly into the Kubernetes API types; e2e/ runs it on a real
// cluster. It is a module of its own so that the gateway's build does not
// carry Helm and the Kubernetes client libraries.
package deploy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	chartcommon "helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const chartDir = "helm/codegw"

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// render renders the chart as `helm template` does, with vals over the
// chart's values and the schema checked.
func render(t *testing.T, vals map[string]any) (map[string]string, error) {
	t.Helper()
	c := loadChart(t)
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(c, vals,
		chartcommon.ReleaseOptions{Name: "codegw", Namespace: "default", Revision: 1, IsInstall: true},
		chartcommon.DefaultCapabilities, false)
	if err != nil {
		return nil, err
	}
	return engine.Render(c, rv)
}

// object is one rendered manifest, decoded strictly.
type object struct {
	file, kind, name string
	obj              any
}

// decode splits the rendered files into manifests and decodes each into its
// k8s.io/api type, failing on an unknown field or kind.
func decode(t *testing.T, files map[string]string) []object {
	t.Helper()
	var names []string
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []object
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		for _, doc := range strings.Split(files[name], "\n---") {
			if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(doc), "---")) == "" {
				continue
			}
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			var obj any
			switch head.APIVersion + " " + head.Kind {
			case "apps/v1 Deployment":
				obj = &appsv1.Deployment{}
			case "apps/v1 StatefulSet":
				obj = &appsv1.StatefulSet{}
			case "v1 Service":
				obj = &corev1.Service{}
			case "v1 ConfigMap":
				obj = &corev1.ConfigMap{}
			case "v1 Secret":
				obj = &corev1.Secret{}
			case "autoscaling/v2 HorizontalPodAutoscaler":
				obj = &autoscalingv2.HorizontalPodAutoscaler{}
			case "policy/v1 PodDisruptionBudget":
				obj = &policyv1.PodDisruptionBudget{}
			case "networking.k8s.io/v1 NetworkPolicy":
				obj = &networkingv1.NetworkPolicy{}
			case "networking.k8s.io/v1 Ingress":
				obj = &networkingv1.Ingress{}
			case "monitoring.coreos.com/v1 ServiceMonitor":
				obj = &serviceMonitor{}
			default:
				t.Fatalf("%s: unexpected kind %s %s", name, head.APIVersion, head.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s: %s %s: %v\n%s", name, head.Kind, head.Metadata.Name, err, doc)
			}
			out = append(out, object{file: name, kind: head.Kind, name: head.Metadata.Name, obj: obj})
		}
	}
	return out
}

// serviceMonitor is the part of the Prometheus operator's type the chart
// sets (its module is not a dependency; unknown fields still fail).
type serviceMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Selector  struct{ MatchLabels map[string]string } `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			Authorization struct {
				Type        string                   `json:"type"`
				Credentials corev1.SecretKeySelector `json:"credentials"`
			} `json:"authorization"`
		} `json:"endpoints"`
	} `json:"spec"`
}

func kinds(objs []object) []string {
	var k []string
	for _, o := range objs {
		k = append(k, o.kind+"/"+o.name)
	}
	sort.Strings(k)
	return k
}

func find[T any](t *testing.T, objs []object) T {
	t.Helper()
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			return v
		}
	}
	var none T
	t.Fatalf("no %T in %v", none, kinds(objs))
	return none
}

var base = map[string]any{"apiKeys": []any{"k1", "k2"}}

func TestLint(t *testing.T) {
	lint := action.NewLint()
	lint.Strict = true
	lint.Namespace = "default"
	res := lint.Run([]string{chartDir}, base)
	for _, m := range res.Messages {
		t.Logf("lint: %s", m)
	}
	if len(res.Errors) > 0 || res.TotalChartsLinted != 1 {
		t.Fatalf("helm lint: %d charts, errors %v", res.TotalChartsLinted, res.Errors)
	}
	// A value the schema refuses fails the lint.
	res = lint.Run([]string{chartDir}, map[string]any{"apiKeys": []any{"k"}, "replicaCount": -1})
	if len(res.Errors) == 0 {
		t.Error("lint with replicaCount -1 passed")
	}
}

func TestTemplateDefaults(t *testing.T) {
	files, err := render(t, base)
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range files {
		if strings.Contains(text, "docker.sock") || strings.Contains(text, "hostPath") || strings.Contains(text, "privileged: true") {
			t.Errorf("%s mentions the Docker socket, a hostPath or a privileged container", name)
		}
	}
	objs := decode(t, files)
	want := []string{"ConfigMap/codegw", "Deployment/codegw", "NetworkPolicy/codegw", "NetworkPolicy/codegw-redis",
		"PodDisruptionBudget/codegw", "Secret/codegw", "Service/codegw", "Service/codegw-redis", "StatefulSet/codegw-redis"}
	if got := kinds(objs); !slices.Equal(got, want) {
		t.Errorf("objects %v, want %v", got, want)
	}

	d := find[*appsv1.Deployment](t, objs)
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 2 || pod.Containers[0].Name != "codegw" || pod.Containers[1].Name != "zygote" {
		t.Fatalf("containers: %+v", pod.Containers)
	}
	gw, zy := pod.Containers[0], pod.Containers[1]
	sc := gw.SecurityContext
	if sc == nil || !deref(sc.RunAsNonRoot) || !deref(sc.ReadOnlyRootFilesystem) || deref(sc.AllowPrivilegeEscalation) ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("gateway security context: %+v", sc)
	}
	zsc := zy.SecurityContext
	wantCaps := []corev1.Capability{"SYS_ADMIN", "SYS_CHROOT", "NET_ADMIN", "SETUID", "SETGID", "KILL"}
	if zsc == nil || zsc.Capabilities == nil || !slices.Equal(zsc.Capabilities.Add, wantCaps) ||
		!slices.Equal(zsc.Capabilities.Drop, []corev1.Capability{"ALL"}) || zsc.SeccompProfile == nil ||
		zsc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault || !deref(zsc.ReadOnlyRootFilesystem) || deref(zsc.Privileged) {
		t.Errorf("zygote security context: %+v", zsc)
	}
	if gw.LivenessProbe == nil || gw.LivenessProbe.HTTPGet.Path != "/healthz" || gw.ReadinessProbe == nil || gw.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probes: %+v %+v", gw.LivenessProbe, gw.ReadinessProbe)
	}
	if gw.Lifecycle == nil || gw.Lifecycle.PreStop == nil || gw.Lifecycle.PreStop.Exec == nil {
		t.Errorf("no preStop: %+v", gw.Lifecycle)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range gw.Env {
		env[e.Name] = e
	}
	if e := env["POD_IP"]; e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != "status.podIP" {
		t.Errorf("POD_IP: %+v", e)
	}
	if e := env["EXECUTOR_INSTANCE_ID"]; e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("EXECUTOR_INSTANCE_ID: %+v", e)
	}
	if e := env["INTERNAL_ADDR"]; e.Value != "http://$(POD_IP):14564" {
		t.Errorf("INTERNAL_ADDR: %+v", e)
	}
	if e := env["REDIS_URL"]; e.Value != "redis://$(CODEGW_REDIS_SERVICE_HOST):$(CODEGW_REDIS_SERVICE_PORT)/0" {
		t.Errorf("REDIS_URL: %+v", e)
	}
	if e := env["API_KEYS"]; e.ValueFrom == nil || e.ValueFrom.SecretKeyRef.Name != "codegw" {
		t.Errorf("API_KEYS: %+v", e)
	}
	cm := find[*corev1.ConfigMap](t, objs)
	if cm.Data["EXECUTOR"] != "zygote" || cm.Data["ZYGOTE_SOCKET"] != "/run/codegw/zygote.sock" || cm.Data["KERNEL_MEMORY"] != "1g" {
		t.Errorf("config map: %v", cm.Data)
	}
	drain := 30
	fmt.Sscan(cm.Data["DRAIN_TIMEOUT"], &drain)
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g <= int64(drain) {
		t.Errorf("terminationGracePeriodSeconds %v not above DRAIN_TIMEOUT %d", g, drain)
	}
	if pod.SecurityContext == nil || pod.SecurityContext.FSGroup == nil || *pod.SecurityContext.FSGroup != *gw.SecurityContext.RunAsGroup {
		t.Errorf("pod fsGroup is not the gateway's gid: %+v", pod.SecurityContext)
	}
	for _, c := range pod.Containers {
		if c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("%s: pull policy %s", c.Name, c.ImagePullPolicy)
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || (m.Name == "shared" && m.MountPath == "/run/codegw")
		}
		if !mounted {
			t.Errorf("%s does not mount the shared directory at /run/codegw", c.Name)
		}
	}
	sec := find[*corev1.Secret](t, objs)
	if sec.StringData["api-keys"] != "k1,k2" || len(sec.StringData["cluster-secret"]) != 32 {
		t.Errorf("secret: %v", sec.StringData)
	}
	np := find[*networkingv1.NetworkPolicy](t, objs)
	if len(np.Spec.Ingress) != 1 || np.Spec.Ingress[0].Ports[0].Port.String() != "http" || len(np.Spec.Egress) != 3 {
		t.Errorf("network policy: %+v", np.Spec)
	}
}

func deref(b *bool) bool { return b != nil && *b }

func TestTemplateOptions(t *testing.T) {
	vals := map[string]any{
		"existingSecret":      "mine",
		"redis":               map[string]any{"enabled": false, "url": "redis://redis.example:6379/1"},
		"autoscaling":         map[string]any{"enabled": true, "minReplicas": 2, "maxReplicas": 5},
		"ingress":             map[string]any{"enabled": true, "className": "nginx", "host": "codegw.example"},
		"serviceMonitor":      map[string]any{"enabled": true},
		"networkPolicy":       map[string]any{"enabled": false},
		"podDisruptionBudget": map[string]any{"enabled": false},
		"image":               map[string]any{"pullPolicy": "Never"},
		"settings":            map[string]any{"RATE_LIMIT": "10"},
		"snapshots":           map[string]any{"s3": map[string]any{"bucket": "snaps", "endpoint": "http://s3.example:8333", "existingSecret": "mine"}},
	}
	files, err := render(t, vals)
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, files)
	want := []string{"ConfigMap/codegw", "Deployment/codegw", "HorizontalPodAutoscaler/codegw", "Ingress/codegw",
		"Service/codegw", "ServiceMonitor/codegw"}
	if got := kinds(objs); !slices.Equal(got, want) {
		t.Errorf("objects %v, want %v", got, want)
	}
	d := find[*appsv1.Deployment](t, objs)
	if d.Spec.Replicas != nil {
		t.Errorf("replicas set (%d) with the autoscaler", *d.Spec.Replicas)
	}
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "REDIS_URL" && e.Value != "redis://redis.example:6379/1" {
			t.Errorf("REDIS_URL %q", e.Value)
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name != "mine" {
			t.Errorf("%s from secret %q", e.Name, e.ValueFrom.SecretKeyRef.Name)
		}
	}
	if p := d.Spec.Template.Spec.Containers[1].ImagePullPolicy; p != corev1.PullNever {
		t.Errorf("pull policy %s", p)
	}
	if cm := find[*corev1.ConfigMap](t, objs); cm.Data["RATE_LIMIT"] != "10" {
		t.Errorf("settings not in the config map: %v", cm.Data)
	} else if cm.Data["SNAPSHOT_S3_BUCKET"] != "snaps" || cm.Data["SNAPSHOT_S3_ENDPOINT"] != "http://s3.example:8333" || cm.Data["SNAPSHOT_DIR"] != "" {
		t.Errorf("snapshot settings: %v", cm.Data)
	}
	keys := 0
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "SNAPSHOT_S3_ACCESS_KEY" || e.Name == "SNAPSHOT_S3_SECRET_KEY" {
			keys++
		}
	}
	if keys != 2 {
		t.Errorf("%d of the S3 keys from the secret", keys)
	}
	if h := find[*autoscalingv2.HorizontalPodAutoscaler](t, objs); h.Spec.MaxReplicas != 5 || *h.Spec.MinReplicas != 2 {
		t.Errorf("hpa: %+v", h.Spec)
	}
}

func TestTemplateRejects(t *testing.T) {
	for name, vals := range map[string]map[string]any{
		"no api keys":       {},
		"pull policy":       {"apiKeys": []any{"k"}, "image": map[string]any{"pullPolicy": "Sometimes"}},
		"kernel memory":     {"apiKeys": []any{"k"}, "kernels": map[string]any{"memory": "lots"}},
		"unknown value":     {"apiKeys": []any{"k"}, "gateway": map[string]any{"colour": "blue"}},
		"external no url":   {"apiKeys": []any{"k"}, "redis": map[string]any{"enabled": false}},
		"comma in a key":    {"apiKeys": []any{"a,b"}},
		"drain not seconds": {"apiKeys": []any{"k"}, "gateway": map[string]any{"drainTimeout": "30s"}},
	} {
		if _, err := render(t, vals); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}
