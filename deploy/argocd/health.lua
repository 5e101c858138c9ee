-- Argo CD health check for oauth-operator.dev/OAuthApplication.
--
-- Install it in argocd-cm under the key for the group and kind (the whole file, this comment
-- included, is the value):
--
--   apiVersion: v1
--   kind: ConfigMap
--   metadata:
--     name: argocd-cm
--     namespace: argocd
--     labels: {app.kubernetes.io/part-of: argocd}
--   data:
--     resource.customizations.health.oauth-operator.dev_OAuthApplication: |
--       -- Argo CD health check for oauth-operator.dev/OAuthApplication.
--       ...
--
-- (with the argo-cd Helm chart: configs.cm."resource.customizations.health.oauth-operator.dev_OAuthApplication").
-- It needs no standard library beyond what Argo CD always opens (useOpenLibs stays false).
--
-- The status it reads, as kstatus does: status.observedGeneration (else the condition's
-- observedGeneration, as kubectl wait reads it) is the generation the status describes,
-- Reconciling=True while work is in flight or a transient error is retried, Stalled=True for a
-- failure only a change ends, Ready=True once the client is registered and its Secret written
-- for that generation.
--
--   Progressing  the operator has not yet observed this generation, Reconciling=True, no Ready
--                yet, or Ready is not True without a stall
--   Degraded     Stalled=True (the reason and the operator's message say what to change)
--   Healthy      Ready=True for the current generation

local function condition(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. c.message
  end
  return text
end

local function health()
  local generation = obj.metadata.generation
  if obj.metadata.deletionTimestamp ~= nil then
    return "Progressing", "Deleting the client at the provider"
  end
  local status = obj.status
  if status == nil or (status.observedGeneration == nil and status.conditions == nil) then
    return "Progressing", "Waiting for the operator to observe the application"
  end
  -- The generation the status describes: status.observedGeneration, else (as kubectl wait
  -- reads it) that of the condition; a condition of an older generation is stale.
  local function observed(c)
    if c ~= nil and c.observedGeneration ~= nil then
      return c.observedGeneration
    end
    return status.observedGeneration
  end
  local function stale(c)
    local seen = observed(c)
    return generation ~= nil and seen ~= nil and seen < generation
  end
  if stale(nil) then
    return "Progressing", "Waiting for the operator to observe generation " .. tostring(generation) ..
      " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  end
  local stalled = condition(status.conditions, "Stalled")
  if stalled ~= nil and stalled.status == "True" and not stale(stalled) then
    return "Degraded", describe(stalled)
  end
  local reconciling = condition(status.conditions, "Reconciling")
  if reconciling ~= nil and reconciling.status == "True" then
    return "Progressing", describe(reconciling)
  end
  local ready = condition(status.conditions, "Ready")
  if ready == nil then
    return "Progressing", "Waiting for the Ready condition"
  end
  if stale(ready) or observed(ready) == nil then
    return "Progressing", "Waiting for Ready of generation " .. tostring(generation)
  end
  if ready.status == "True" then
    return "Healthy", describe(ready)
  end
  return "Progressing", describe(ready)
end

local hs = {}
hs.status, hs.message = health()
return hs
