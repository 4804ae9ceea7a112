// The viewer's toolbar controls shared by the reading viewer and the read-only viewer of another
// hospital's study: the tool buttons with Reset, and the window/level presets (keys 1-9).

import type { ViewerConfig } from '../api';
import { h } from '../ui';
import { isTypingTarget, type StackView } from './stack';
import { CHOOSABLE_TOOLS, type ToolKey, type ViewerTools } from './tools';

/** The presets when the site's (GET /api/viewer/config) cannot be had. */
export const FALLBACK_PRESETS: ViewerConfig['presets'] = [
  { name: 'CT brain', window: 80, level: 40 },
  { name: 'Subdural', window: 200, level: 80 },
  { name: 'Stroke', window: 40, level: 40 },
  { name: 'Bone', window: 2800, level: 600 },
  { name: 'Lung', window: 1500, level: -600 },
];

/** One button per choosable tool (`[data-testid=tool-*]`) and Reset, appended to `toolbar`. */
export function renderToolButtons(toolbar: HTMLElement, tools: ViewerTools, stack: StackView): void {
  for (const [key, tool] of Object.entries(CHOOSABLE_TOOLS) as [ToolKey, typeof CHOOSABLE_TOOLS[ToolKey]][]) {
    const button = h('button', { type: 'button', class: 'tool', 'data-testid': key,
      title: tool.title, 'aria-pressed': String(key === tools.activeTool) }, tool.label);
    button.addEventListener('click', () => {
      tools.choose(key);
      toolbar.querySelectorAll<HTMLButtonElement>('button.tool').forEach((other) =>
        other.setAttribute('aria-pressed', String(other === button)));
    });
    toolbar.append(button);
  }
  const reset = h('button', { type: 'button', class: 'secondary', 'data-testid': 'reset-view',
    title: 'Reset zoom, pan and window' }, 'Reset');
  reset.addEventListener('click', () => stack.reset());
  toolbar.append(reset);
}

/** The window/level preset buttons (`[data-testid=preset]`) in `container`; keys 1-9 too. */
export function renderPresets(
  container: HTMLElement,
  presets: ViewerConfig['presets'],
  stack: StackView,
): void {
  container.replaceChildren(...presets.map((preset, position) => {
    const button = h('button', { type: 'button', class: 'preset', 'data-testid': 'preset',
      'data-preset-name': preset.name,
      title: `W ${preset.window} L ${preset.level}${position < 9 ? ` (key ${position + 1})` : ''}`,
    }, preset.name);
    button.addEventListener('click', () => stack.applyPreset(preset));
    return button;
  }));
  document.addEventListener('keydown', (event) => {
    if (isTypingTarget(event.target) || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    const preset = presets[Number(event.key) - 1];
    if (/^[1-9]$/.test(event.key) && preset) {
      stack.applyPreset(preset);
    }
  });
}
