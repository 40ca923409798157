{{/*
Names are fixed, not derived from the release name: zpilot's model looks for the ztunnels as
Istio's 2022 ambient mesh placed them (pods labelled app=ztunnel in istio-system, service account
ztunnel), and ztunnels find the control plane by its Service's name.
*/}}

{{- define "zpilot.namespace" -}}istio-system{{- end }}

{{/* Fail early, naming the fix, when installed elsewhere than where zpilot looks for ztunnels. */}}
{{- define "zpilot.checkNamespace" -}}
{{- if ne .Release.Namespace (include "zpilot.namespace" .) -}}
{{- fail (printf "zpilot must be installed into namespace %s (zpilot's model looks for the ztunnels there), not %s: helm install ... --namespace %s --create-namespace" (include "zpilot.namespace" .) .Release.Namespace (include "zpilot.namespace" .)) -}}
{{- end -}}
{{- end }}

{{/* The Service ztunnels dial for ADS: <name>.<namespace>.svc:<port>. */}}
{{- define "zpilot.xdsAddress" -}}
{{ include "zpilot.xdsHost" . }}:{{ .Values.controlPlane.ports.xds }}
{{- end }}

{{/* The ConfigMap zpilot publishes the mesh's trust bundle in (ztunnels check the ADS server against it). */}}
{{- define "zpilot.trustBundleConfigMap" -}}zpilot-ca-root{{- end }}

{{/* The audience of the ztunnels' projected tokens: zpilot serve's --token-audience default. */}}
{{- define "zpilot.tokenAudience" -}}zpilot{{- end }}

{{/* The Service's name as ztunnels dial it: the name the ADS server's certificate must carry. */}}
{{- define "zpilot.xdsHost" -}}
zpilot.{{ .Release.Namespace }}.svc
{{- end }}

{{- define "zpilot.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "zpilot.envoyImage" -}}
{{ .Values.ztunnel.image.repository }}:{{ .Values.ztunnel.image.tag }}
{{- end }}

{{/* Labels every object carries (Kubernetes' recommended labels). */}}
{{- define "zpilot.labels" -}}
app.kubernetes.io/part-of: zpilot
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/*
Pod labels of zpilot's own pods: never enrolled in the mesh they run (Istio's opt-out label).
*/}}
{{- define "zpilot.podOptOut" -}}
istio.io/dataplane-mode: none
sidecar.istio.io/inject: "false"
{{- end }}

{{/* Global options of every zpilot command: log format and level. */}}
{{- define "zpilot.globalArgs" -}}
{{- if eq .Values.logLevel "debug" }}
- -vv
{{- else }}
- -v
{{- end }}
- --log-format
- {{ .Values.logFormat }}
{{- end }}

{{/* The container security context of a container that needs no privilege at all. */}}
{{- define "zpilot.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "zpilot.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- end }}
