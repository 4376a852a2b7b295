//! The compute pipelines, one per shader in `shaders/`, and the dispatch geometry that
//! every kernel of a pass shares.

use bytemuck::{Pod, Zeroable};

use crate::error::{BnError, Result};
use crate::shape::Shape;

/// Invocations per workgroup of the reduction and element-wise kernels (the shaders' WG).
pub(crate) const WORKGROUP: u32 = 256;
/// Invocations per workgroup of the per-channel finalize kernels.
pub(crate) const FINALIZE_WORKGROUP: u32 = 64;
/// Bytes of one partial record (StatsPartial is 16, GradPartial 8).
pub(crate) const PARTIAL_BYTES: u64 = 16;

// Params.flags, as in the shaders.
pub(crate) const UPDATE_RUNNING: u32 = 1;
pub(crate) const BIASED_RUNNING_VAR: u32 = 2;
pub(crate) const FROZEN_STATS: u32 = 4;

/// One compiled shader: its pipeline and the bind-group layout derived from it.
pub(crate) struct Kernel {
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

impl Kernel {
    fn new(device: &wgpu::Device, name: &'static str, source: &'static str) -> Result<Self> {
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let v = pollster::block_on(validation.pop());
        let i = pollster::block_on(internal.pop());
        if let Some(e) = v.or(i) {
            return Err(BnError::Wgpu {
                kernel: format!("shaders/{name}.wgsl"),
                message: e.to_string(),
            });
        }
        Ok(Self {
            name,
            pipeline,
            layout,
        })
    }

    /// A bind group whose binding i is `resources[i]`.
    pub(crate) fn bind(
        &self,
        device: &wgpu::Device,
        resources: &[wgpu::BindingResource<'_>],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        })
    }

    pub(crate) fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        groups: (u32, u32),
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }
}

macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        pub(crate) struct Kernels {
            $(pub(crate) $name: Kernel,)*
        }

        impl Kernels {
            pub(crate) fn new(device: &wgpu::Device) -> Result<Self> {
                Ok(Self {
                    $($name: Kernel::new(
                        device,
                        stringify!($name),
                        include_str!(concat!("../../shaders/", stringify!($name), ".wgsl")),
                    )?,)*
                })
            }
        }
    };
}

kernels!(
    stats_reduce,
    stats_finalize,
    eval_finalize,
    grad_reduce,
    grad_finalize,
    apply_forward,
    apply_backward,
);

/// The uniform every kernel reads; field order and types match `struct Params` in the shaders.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct Params {
    pub channels: u32,
    pub inner: u32,
    pub outer: u32,
    pub count: u32,
    pub splits: u32,
    pub rows_per_split: u32,
    pub tile_c: u32,
    pub tile_i: u32,
    pub tile_o: u32,
    pub apply_width: u32,
    pub apply_rows: u32,
    pub apply_rows_per_group: u32,
    pub total: u32,
    pub flags: u32,
    pub eps: f32,
    pub momentum: f32,
}

/// How one shape is cut into workgroups, for every kernel of a pass.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub params: Params,
    pub reduce_groups: (u32, u32),
    pub finalize_groups: (u32, u32),
    pub apply_groups: (u32, u32),
}

impl Geometry {
    pub(crate) fn partials_bytes(&self) -> u64 {
        self.params.channels as u64 * self.params.splits as u64 * PARTIAL_BYTES
    }

    pub(crate) fn new(shape: &Shape, limits: &wgpu::Limits) -> Result<Self> {
        let (outer, channels, inner) = shape.view();
        let numel = shape.numel() as u64;
        let max_groups = limits.max_compute_workgroups_per_dimension as u64;
        let limit = |what, value: u64, limit: u64| {
            if value > limit {
                Err(BnError::Limit { what, value, limit })
            } else {
                Ok(())
            }
        };
        limit("element count", numel, u32::MAX as u64)?;
        limit(
            "tensor bytes in one storage binding",
            numel * 4,
            limits.max_storage_buffer_binding_size,
        )?;
        let (outer, channels, inner) = (outer as u32, channels as u32, inner as u32);

        // Reduction: lanes (tile_c, tile_i, tile_o) over channels, inner, outer rows.
        let tile_i = inner.next_power_of_two().min(WORKGROUP);
        let tile_c = channels.next_power_of_two().min(WORKGROUP / tile_i);
        let tile_o = WORKGROUP / (tile_i * tile_c);
        let channel_blocks = channels.div_ceil(tile_c);
        limit("channel blocks", channel_blocks as u64, max_groups)?;
        // About 64 values per lane, but split further while there are too few workgroups.
        let per_row = inner as u64 * tile_c as u64;
        let mut rows_per_split = (64 * WORKGROUP as u64).div_ceil(per_row).max(1);
        while rows_per_split > 1
            && channel_blocks as u64 * (outer as u64).div_ceil(rows_per_split) < 512
            && rows_per_split * per_row > 8 * WORKGROUP as u64
        {
            rows_per_split /= 2;
        }
        let rows_per_split = rows_per_split.max((outer as u64).div_ceil(max_groups)) as u32;
        let splits = outer.div_ceil(rows_per_split);

        // Element-wise: rows of whole [channels][inner] planes, at least 1024 columns wide.
        let plane = channels as u64 * inner as u64;
        let planes_per_row = 1024u64.div_ceil(plane).min(outer as u64).max(1);
        let apply_width = plane * planes_per_row;
        let apply_rows = (outer as u64).div_ceil(planes_per_row);
        let column_groups = apply_width.div_ceil(WORKGROUP as u64);
        limit("element-wise column workgroups", column_groups, max_groups)?;
        let apply_rows_per_group = apply_rows.min(16).max(apply_rows.div_ceil(max_groups));
        let row_groups = apply_rows.div_ceil(apply_rows_per_group);

        let finalize_groups = channels.div_ceil(FINALIZE_WORKGROUP);
        Ok(Self {
            params: Params {
                channels,
                inner,
                outer,
                count: shape.per_channel() as u32,
                splits,
                rows_per_split,
                tile_c,
                tile_i,
                tile_o,
                apply_width: apply_width as u32,
                apply_rows: apply_rows as u32,
                apply_rows_per_group: apply_rows_per_group as u32,
                total: numel as u32,
                flags: 0,
                eps: 0.0,
                momentum: 0.0,
            },
            reduce_groups: (splits, channel_blocks),
            finalize_groups: (finalize_groups, 1),
            apply_groups: (column_groups as u32, row_groups as u32),
        })
    }
}
