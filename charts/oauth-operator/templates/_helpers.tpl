{{- define "oauth-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "oauth-operator.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "oauth-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "oauth-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "oauth-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "oauth-operator.leaseName" -}}
{{- default (include "oauth-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- /* Cluster-scoped objects, read only. */ -}}
{{- define "oauth-operator.clusterReadRules" -}}
# Wait for the CRDs to be established before starting the controllers.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
# Applications may name a ClusterOAuthProvider (watched even in a namespace-scoped install).
- apiGroups: [oauth-operator.dev]
  resources: [clusteroauthproviders]
  verbs: [get, list, watch]
# ClusterOAuthProvider.allowedNamespaces.selector matches namespace labels (a metadata watch).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end -}}

{{- /* Cluster-wide only: the cluster providers' in-use finalizer and status. */ -}}
{{- define "oauth-operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [oauth-operator.dev]
  resources: [clusteroauthproviders]
  verbs: [get, list, watch, patch, update]   # patch/update: the in-use finalizer
- apiGroups: [oauth-operator.dev]
  resources: [clusteroauthproviders/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end -}}

{{- define "oauth-operator.secretRules" -}}
# The credential Secrets it writes (never an update-in-place of a foreign one: the operator
# checks ownership by uid), the provider credentials and access records it reads.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
{{- end -}}

{{- /* Everything in a watched namespace. */ -}}
{{- define "oauth-operator.namespacedRules" -}}
- apiGroups: [oauth-operator.dev]
  resources: [oauthapplications]
  verbs: [get, list, watch, patch, update]   # patch/update: the finalizer
- apiGroups: [oauth-operator.dev]
  resources: [oauthproviders]
  verbs: [get, list, watch, patch, update]   # patch/update: the in-use finalizer
- apiGroups: [oauth-operator.dev]
  resources: [oauthapplications/status, oauthproviders/status]
  verbs: [get, patch, update]
# The Secret's ownerReference sets blockOwnerDeletion, which clusters enforcing
# OwnerReferencesPermissionEnforcement allow only with this.
- apiGroups: [oauth-operator.dev]
  resources: [oauthapplications/finalizers]
  verbs: [update]
{{ include "oauth-operator.secretRules" . }}
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
