package k8stest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/yaml"
)

const chart = "../helm/relaybox"

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

// helm returns the path of the helm pinned in go.mod (built on first use).
func helm(t *testing.T) string {
	t.Helper()
	helmOnce.Do(func() {
		out, err := exec.Command("go", "tool", "-n", "helm").Output()
		if err != nil {
			helmErr = fmt.Errorf("go tool -n helm: %w", err)
			return
		}
		helmPath = strings.TrimSpace(string(out))
	})
	if helmErr != nil {
		t.Fatal(helmErr)
	}
	return helmPath
}

func runHelm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helm(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// helm keeps its caches and config in the test's own directories.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// strict decodes Kubernetes objects, failing on unknown and duplicate fields.
var strict = func() runtime.Decoder {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme,
		policyv1.AddToScheme, monitoringv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// render runs helm template with sets and strictly decodes every object.
func render(t *testing.T, sets ...string) []runtime.Object {
	t.Helper()
	args := []string{"template", "rb", chart, "--namespace", "outbox"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, err := runHelm(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var objs []runtime.Object
	for i, doc := range strings.Split(out, "\n---") {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		obj, err := decode([]byte(doc))
		if err != nil {
			t.Fatalf("rendered object %d does not decode strictly: %v\n%s", i, err, doc)
		}
		objs = append(objs, obj)
	}
	return objs
}

func decode(doc []byte) (runtime.Object, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, err
	}
	obj, _, err := strict.Decode(js, nil, nil)
	return obj, err
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func TestChart_Lint(t *testing.T) {
	for _, sets := range [][]string{nil, {"serviceMonitor.enabled=true,prometheusRule.enabled=true,dashboard.enabled=true"},
		{"secret.create=true,secret.data.DATABASE_URL=postgres://u:p@db/app"}} {
		args := []string{"lint", "--strict", chart}
		for _, s := range sets {
			args = append(args, "--set", s)
		}
		if out, err := runHelm(t, args...); err != nil {
			t.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestChart_RendersStrictKubernetesObjects renders the chart with every option on and
// checks each object against its Kubernetes type and what the chart promises.
func TestChart_RendersStrictKubernetesObjects(t *testing.T) {
	objs := render(t, "replicaCount=3", "serviceMonitor.enabled=true", "prometheusRule.enabled=true", "dashboard.enabled=true",
		"secret.create=true", "secret.data.DATABASE_URL=postgres://relay:hunter2@db/app", "secret.data.KAFKA_SASL_PASSWORD=s3cr3t")
	kinds := map[string]int{}
	var dep *appsv1.Deployment
	var job *batchv1.Job
	var pdb *policyv1.PodDisruptionBudget
	var secret *corev1.Secret
	for _, o := range objs {
		kinds[fmt.Sprintf("%T", o)]++
		switch v := o.(type) {
		case *appsv1.Deployment:
			dep = v
		case *batchv1.Job:
			job = v
		case *policyv1.PodDisruptionBudget:
			pdb = v
		case *corev1.Secret:
			secret = v
		case *monitoringv1.PrometheusRule:
			if len(v.Spec.Groups) == 0 || len(v.Spec.Groups[0].Rules) < 5 {
				t.Errorf("PrometheusRule carries %d groups: alerts.yml not included", len(v.Spec.Groups))
			}
		case *monitoringv1.ServiceMonitor:
			ep := v.Spec.Endpoints
			if len(ep) != 1 || len(ep[0].RelabelConfigs) != 1 || ep[0].RelabelConfigs[0].Replacement == nil || *ep[0].RelabelConfigs[0].Replacement != "relaybox" {
				t.Errorf("ServiceMonitor does not set job=relaybox: %+v", ep)
			}
		case *corev1.ConfigMap:
			if !strings.Contains(v.Data["relaybox.json"], `"schemaVersion"`) {
				t.Errorf("dashboard ConfigMap does not carry the dashboard")
			}
		}
	}
	for _, k := range []string{"*v1.Deployment", "*v1.Job", "*v1.PodDisruptionBudget", "*v1.Secret", "*v1.Service", "*v1.ServiceAccount",
		"*v1.ConfigMap", "*v1.ServiceMonitor", "*v1.PrometheusRule"} {
		if kinds[k] != 1 {
			t.Errorf("%d objects of type %s, want 1 (rendered: %v)", kinds[k], k, kinds)
		}
	}
	if t.Failed() {
		return
	}
	if *dep.Spec.Replicas != 3 {
		t.Errorf("Deployment replicas %d, want 3", *dep.Spec.Replicas)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("liveness probe: %+v, want GET /healthz", c.LivenessProbe)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe: %+v, want GET /readyz", c.ReadinessProbe)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources: %+v", c.Resources)
	}
	// Secrets: from the Secret via envFrom, never in args or plain env values.
	for _, pod := range []struct {
		name string
		c    corev1.Container
	}{{"relay", c}, {"migrate", job.Spec.Template.Spec.Containers[0]}} {
		if len(pod.c.EnvFrom) != 1 || pod.c.EnvFrom[0].SecretRef == nil || pod.c.EnvFrom[0].SecretRef.Name != secret.Name {
			t.Errorf("%s: envFrom %+v, want the Secret %s", pod.name, pod.c.EnvFrom, secret.Name)
		}
		all := strings.Join(append(append([]string{}, pod.c.Command...), pod.c.Args...), " ")
		for _, e := range pod.c.Env {
			all += " " + e.Name + "=" + e.Value
		}
		for _, s := range []string{"hunter2", "s3cr3t", "DATABASE_URL"} {
			if strings.Contains(all, s) {
				t.Errorf("%s: %q in args or env: %s", pod.name, s, all)
			}
		}
	}
	if got := strings.Join(job.Spec.Template.Spec.Containers[0].Args, " "); got != "migrate up" {
		t.Errorf("migration Job args %q, want \"migrate up\"", got)
	}
	if h := job.Annotations["helm.sh/hook"]; h != "pre-install,pre-upgrade" {
		t.Errorf("migration Job hook %q", h)
	}
	if string(secret.Data["DATABASE_URL"]) != "postgres://relay:hunter2@db/app" {
		t.Errorf("Secret DATABASE_URL = %q", secret.Data["DATABASE_URL"])
	}
	// The Secret is a hook that runs before the Job, which reads it.
	sw, err1 := strconv.Atoi(secret.Annotations["helm.sh/hook-weight"])
	jw, err2 := strconv.Atoi(job.Annotations["helm.sh/hook-weight"])
	if err1 != nil || err2 != nil || sw >= jw || !strings.Contains(secret.Annotations["helm.sh/hook"], "pre-install") {
		t.Errorf("Secret hook %q weight %q does not run before the Job's (weight %q)", secret.Annotations["helm.sh/hook"],
			secret.Annotations["helm.sh/hook-weight"], job.Annotations["helm.sh/hook-weight"])
	}
	for k, v := range pdb.Spec.Selector.MatchLabels {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("PodDisruptionBudget selects %s=%s, which the relay's pods do not carry", k, v)
		}
	}
}

// TestChart_Defaults: the default values render strict objects, without the optional
// ones, and use the existing Secret.
func TestChart_Defaults(t *testing.T) {
	objs := render(t)
	for _, o := range objs {
		switch v := o.(type) {
		case *monitoringv1.ServiceMonitor, *monitoringv1.PrometheusRule, *corev1.ConfigMap, *corev1.Secret:
			t.Errorf("default values render an optional %T", v)
		case *appsv1.Deployment:
			if ref := v.Spec.Template.Spec.Containers[0].EnvFrom[0].SecretRef.Name; ref != "relaybox-credentials" {
				t.Errorf("envFrom Secret %q, want relaybox-credentials", ref)
			}
		}
	}
}

// TestChart_RefusesSecretsInEnv: a credential put in the plain env values is refused
// with a clear error, and so is a chart-made Secret without DATABASE_URL.
func TestChart_RefusesSecretsInEnv(t *testing.T) {
	for set, want := range map[string]string{
		"env.DATABASE_URL=postgres://u:p@db/app": "env.DATABASE_URL: a secret",
		"env.KAFKA_SASL_PASSWORD=x":              "env.KAFKA_SASL_PASSWORD: a secret",
		"secret.create=true":                     "secret.data.DATABASE_URL is required",
	} {
		out, err := runHelm(t, "template", "rb", chart, "--set", set)
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("--set %s: err %v, output lacks %q:\n%s", set, err, want, out)
		}
		if strings.Contains(out, "u:p@") {
			t.Errorf("--set %s: the error repeats the credential:\n%s", set, out)
		}
	}
}

// TestStrictDecoder_RefusesUnknownFields: the decoder the tests rely on is strict.
func TestStrictDecoder_RefusesUnknownFields(t *testing.T) {
	for _, doc := range []string{
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicass: 2}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 1, targetPortt: 2}]}\n",
		"apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec: {endpoints: [{prot: metrics}]}\n",
	} {
		if _, err := decode([]byte(doc)); err == nil {
			t.Errorf("decoded without error:\n%s", doc)
		}
	}
	if _, err := decode([]byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 2}\n")); err != nil {
		t.Errorf("a valid Deployment: %v", err)
	}
}
