// The viewer's tools: the left mouse button runs the chosen tool (window/level, zoom, pan, length,
// rectangle ROI); the wheel scrolls the stack, the right button zooms and the middle button pans
// whatever is chosen. The last rectangle ROI drawn is remembered for "add finding".

import { eventTarget, utilities as coreUtilities } from '@cornerstonejs/core';
import {
  addTool,
  annotation,
  Enums as ToolEnums,
  LengthTool,
  PanTool,
  RectangleROITool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  type Types as ToolTypes,
} from '@cornerstonejs/tools';

import type { Region } from '../api';
import { RENDERING_ENGINE_ID, VIEWPORT_ID } from './stack';

const TOOL_GROUP_ID = 'radcloud-tools';
const { MouseBindings } = ToolEnums;

/** The choosable tools: button test id -> Cornerstone tool name. */
export const CHOOSABLE_TOOLS = {
  'tool-wl': { name: WindowLevelTool.toolName, label: 'W/L', title: 'Window/level (drag)' },
  'tool-zoom': { name: ZoomTool.toolName, label: 'Zoom', title: 'Zoom (drag; right button)' },
  'tool-pan': { name: PanTool.toolName, label: 'Pan', title: 'Pan (drag; middle button)' },
  'tool-length': { name: LengthTool.toolName, label: 'Length', title: 'Measure a length' },
  'tool-roi': { name: RectangleROITool.toolName, label: 'ROI', title: 'Rectangle ROI' },
} as const;

export type ToolKey = keyof typeof CHOOSABLE_TOOLS;

export class ViewerTools {
  private readonly group: NonNullable<ReturnType<typeof ToolGroupManager.createToolGroup>>;
  private active: ToolKey = 'tool-wl';
  private lastRoi: ToolTypes.Annotation | null = null;

  constructor() {
    for (const tool of [WindowLevelTool, ZoomTool, PanTool, StackScrollTool, LengthTool,
      RectangleROITool]) {
      addTool(tool);
    }
    const group = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
    if (!group) {
      throw new Error(`tool group "${TOOL_GROUP_ID}" exists already`);
    }
    this.group = group;
    for (const { name } of Object.values(CHOOSABLE_TOOLS)) {
      group.addTool(name);
    }
    group.addTool(StackScrollTool.toolName);
    group.addViewport(VIEWPORT_ID, RENDERING_ENGINE_ID);
    group.setToolActive(StackScrollTool.toolName, {
      bindings: [{ mouseButton: MouseBindings.Wheel }],
    });
    this.bindFixed();
    this.choose('tool-wl');
    eventTarget.addEventListener(ToolEnums.Events.ANNOTATION_COMPLETED, ((
      event: ToolTypes.EventTypes.AnnotationCompletedEventType,
    ) => {
      if (event.detail.annotation.metadata?.toolName === RectangleROITool.toolName) {
        this.lastRoi = event.detail.annotation;
      }
    }) as EventListener);
  }

  /** Right button zooms and middle button pans, whichever tool the left button runs. */
  private bindFixed(): void {
    this.group.setToolActive(ZoomTool.toolName, {
      bindings: [{ mouseButton: MouseBindings.Secondary }],
    });
    this.group.setToolActive(PanTool.toolName, {
      bindings: [{ mouseButton: MouseBindings.Auxiliary }],
    });
  }

  get activeTool(): ToolKey {
    return this.active;
  }

  /** Put the chosen tool on the left button; the others stay visible (passive). */
  choose(key: ToolKey): void {
    for (const [other, { name }] of Object.entries(CHOOSABLE_TOOLS)) {
      if (other !== key) {
        this.group.setToolPassive(name, { removeAllBindings: true });
      }
    }
    this.bindFixed();
    const { name } = CHOOSABLE_TOOLS[key];
    const bindings: ToolTypes.IToolBinding[] = [{ mouseButton: MouseBindings.Primary }];
    if (name === ZoomTool.toolName) {
      bindings.push({ mouseButton: MouseBindings.Secondary });
    } else if (name === PanTool.toolName) {
      bindings.push({ mouseButton: MouseBindings.Auxiliary });
    }
    this.group.setToolActive(name, { bindings });
    this.active = key;
  }

  /**
   * The last rectangle ROI drawn on `imageId`, as a region in that image's pixel coordinates
   * (columns, rows); null when the last one is on another image or was removed.
   */
  roiOn(imageId: string): Region | null {
    const roi = this.lastRoi;
    if (!roi?.annotationUID || !annotation.state.getAnnotation(roi.annotationUID)) {
      return null;
    }
    if (roi.metadata?.referencedImageId !== imageId) {
      return null;
    }
    const corners = (roi.data.handles?.points ?? []).map((point) =>
      coreUtilities.worldToImageCoords(imageId, point));
    if (corners.length === 0 || corners.some((corner) => !corner)) {
      return null;
    }
    const xs = corners.map((corner) => corner![0]);
    const ys = corners.map((corner) => corner![1]);
    const x = Math.max(0, Math.floor(Math.min(...xs)));
    const y = Math.max(0, Math.floor(Math.min(...ys)));
    return {
      x,
      y,
      width: Math.max(1, Math.ceil(Math.max(...xs)) - x),
      height: Math.max(1, Math.ceil(Math.max(...ys)) - y),
    };
  }
}
