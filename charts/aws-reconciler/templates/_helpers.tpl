{{/*
Names, labels and the pieces shared by the Deployment and the migration Job.
*/}}

{{/* Chart name, overridable. */}}
{{- define "aws-reconciler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "aws-reconciler.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aws-reconciler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "aws-reconciler.labels" -}}
helm.sh/chart: {{ include "aws-reconciler.chart" . }}
app.kubernetes.io/name: {{ include "aws-reconciler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: airflow
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector of the reconciler pods. `component` keeps the migration Job's pod out of the Service,
the PodDisruptionBudget and the NetworkPolicy.
*/}}
{{- define "aws-reconciler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aws-reconciler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: reconciler
{{- end }}

{{- define "aws-reconciler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aws-reconciler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: digest wins over tag; the tag defaults to the chart's appVersion. */}}
{{- define "aws-reconciler.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
One setting as an environment variable value. Helm parses every YAML number as a float64, so
whole numbers are printed without a decimal point or exponent (604800, not 6.048e+05: an int
option would reject the latter); lists and maps become JSON, which the settings models parse.
*/}}
{{- define "aws-reconciler.settingValue" -}}
{{- $v := . }}
{{- if or (kindIs "slice" $v) (kindIs "map" $v) }}
{{- toJson $v }}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- int64 $v }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{/*
Environment shared by the reconciler and the migration Job: the settings from `config`, the
database URL from the existing Secret (never a literal), AWS region, airflow.cfg location.
*/}}
{{- define "aws-reconciler.env" -}}
{{- range $section := keys .Values.config | sortAlpha }}
{{- $options := index $.Values.config $section }}
{{- range $option := keys $options | sortAlpha }}
{{- $value := index $options $option }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value ""))) }}
- name: {{ printf "AIRFLOW__%s__%s" (upper $section) (upper $option) }}
  value: {{ include "aws-reconciler.settingValue" $value | quote }}
{{- end }}
{{- end }}
{{- end }}
- name: {{ .Values.database.envVar }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- with .Values.tokenKey.existingSecret }}
- name: AIRFLOW__AWS_RECONCILER__TOKEN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.tokenKey.existingSecretKey }}
{{- end }}
{{- with .Values.aws.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- if .Values.airflowConfig.existingConfigMap }}
- name: AIRFLOW_CONFIG
  value: /opt/airflow/config/airflow.cfg
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes shared by the reconciler and the migration Job. */}}
{{- define "aws-reconciler.volumes" -}}
# The root filesystem is read-only: Python, boto3 and Alembic get a small writable /tmp.
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- if .Values.airflowConfig.existingConfigMap }}
- name: airflow-config
  configMap:
    name: {{ .Values.airflowConfig.existingConfigMap }}
    items:
      - key: {{ .Values.airflowConfig.key }}
        path: airflow.cfg
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "aws-reconciler.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.airflowConfig.existingConfigMap }}
- name: airflow-config
  mountPath: /opt/airflow/config
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Checks across values that values.schema.json cannot express; each fails the install with one
line naming the values, where the reconciler would otherwise exit at start and crash-loop.
With airflow.cfg mounted, an option unset here may be set there: only what values set is checked.
*/}}
{{- define "aws-reconciler.validate" -}}
{{- $cfg := .Values.airflowConfig.existingConfigMap }}
{{- $core := default dict .Values.config.aws_reconciler }}
{{- $ecs := default dict .Values.config.aws_reconciler_ecs }}
{{- $batch := default dict .Values.config.aws_reconciler_batch }}
{{- $orCfg := "set it in config, or mount airflow.cfg with airflowConfig.existingConfigMap" }}
{{- /* Leader election: the rules of the settings model (defaults 15, 10, 2 seconds). */}}
{{- $defaults := dict }}
{{- if not $cfg }}
{{- $defaults = dict "lease_duration" 15 "renew_deadline" 10 "retry_period" 2 }}
{{- end }}
{{- $lease := default $defaults.lease_duration $core.lease_duration }}
{{- $renew := default $defaults.renew_deadline $core.renew_deadline }}
{{- $retry := default $defaults.retry_period $core.retry_period }}
{{- if and $lease $renew (not (lt (float64 $renew) (float64 $lease))) }}
{{- fail (printf "config.aws_reconciler.renew_deadline (%v) must be shorter than lease_duration (%v): a leader must stop acting before another replica can take the lease over" $renew $lease) }}
{{- end }}
{{- if and $renew $retry (not (lt (float64 $retry) (float64 $renew))) }}
{{- fail (printf "config.aws_reconciler.retry_period (%v) must be shorter than renew_deadline (%v)" $retry $renew) }}
{{- end }}
{{- with $core.aws_call_timeout }}
{{- if and $lease $renew (not (lt (addf $renew .) (float64 $lease))) }}
{{- fail (printf "config.aws_reconciler.renew_deadline (%v) + aws_call_timeout (%v) must be shorter than lease_duration (%v), so a call a leader sent lands before another replica can take over" $renew . $lease) }}
{{- end }}
{{- end }}
{{- /* Backends: what the settings models refuse at start. */}}
{{- if and $ecs.launch_type $ecs.capacity_provider_strategy }}
{{- fail "config.aws_reconciler_ecs: set launch_type or capacity_provider_strategy, not both (ECS rejects the pair, and the reconciler would exit at start)" }}
{{- end }}
{{- if and $ecs.cluster (not $cfg) }}
{{- $missing := list }}
{{- range list "task_definition" "container_name" }}
{{- if not (index $ecs .) }}{{ $missing = append $missing . }}{{ end }}
{{- end }}
{{- with $missing }}
{{- $are := ternary "are" "is" (gt (len .) 1) }}
{{- fail (printf "config.aws_reconciler_ecs.cluster is set but %s %s not, and the reconciler would exit at start: %s" (join " and " .) $are $orCfg) }}
{{- end }}
{{- end }}
{{- if and $batch.job_queue (not $batch.job_definition) (not $cfg) }}
{{- fail (printf "config.aws_reconciler_batch.job_queue is set but job_definition is not, and the reconciler would exit at start: %s" $orCfg) }}
{{- end }}
{{- range $section, $settings := dict "aws_reconciler_ecs" $ecs "aws_reconciler_batch" $batch }}
{{- if and (eq (toString $settings.observation) "events") (not $settings.events_queue_url) (not $cfg) }}
{{- fail (printf "config.%s.observation is events but events_queue_url is not set, and the reconciler would exit at start: set it to the queue URL that deploy/events/cloudformation.yaml outputs, or mount airflow.cfg with airflowConfig.existingConfigMap" $section) }}
{{- end }}
{{- end }}
{{- if not (or $ecs.cluster $batch.job_queue $cfg) }}
{{- fail "no backend is configured, and the reconciler would exit at start: set config.aws_reconciler_ecs.cluster (with task_definition and container_name) or config.aws_reconciler_batch.job_queue (with job_definition), or mount Airflow's airflow.cfg with airflowConfig.existingConfigMap" }}
{{- end }}
{{- /* The database URL and the reconciler's settings have their own values. */}}
{{- range .Values.extraEnv }}
{{- $name := upper (toString .name) }}
{{- if or (hasPrefix "AIRFLOW__AWS_RECONCILER" $name) (eq $name "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") }}
{{- fail (printf "extraEnv: %s is managed by the chart: set the database URL through database.existingSecret and settings under config.<section>.<option>" .name) }}
{{- end }}
{{- end }}
{{- /* A budget that allows no eviction blocks every node drain (Kubernetes rounds percentages up). */}}
{{- with .Values.podDisruptionBudget }}
{{- if .enabled }}
{{- $replicas := int64 $.Values.replicaCount }}
{{- if and (not (kindIs "invalid" .minAvailable)) (not (kindIs "invalid" .maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- if not (kindIs "invalid" .minAvailable) }}
{{- $min := .minAvailable }}
{{- if kindIs "string" $min }}
{{- $min = int64 (ceil (divf (mulf (atoi (trimSuffix "%" $min)) $replicas) 100)) }}
{{- end }}
{{- if ge (int64 $min) $replicas }}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be lower than replicaCount (%v), else no node could ever be drained" .minAvailable $replicas) }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" .maxUnavailable) }}
{{- $max := .maxUnavailable }}
{{- if kindIs "string" $max }}
{{- $max = int64 (ceil (divf (mulf (atoi (trimSuffix "%" $max)) $replicas) 100)) }}
{{- end }}
{{- if lt (int64 $max) 1 }}
{{- fail (printf "podDisruptionBudget.maxUnavailable (%v) allows no eviction, so no node could ever be drained: use at least 1" .maxUnavailable) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
